"""The deploy side: the precision table, the fast eager path, export runners, export, int8 quantization, the benchmark.

Two layers live here: :mod:`.precision`, :mod:`.fastpath` and :mod:`.runners` sit below the model-file reader and
the Predictor (which use them); :mod:`.export`, :mod:`.quantize` and :mod:`.benchmark` sit above the engine.
Nothing is imported here, so importing one part never loads another.
"""
