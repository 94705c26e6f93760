"""deeplab.classes and the dataset palettes: the names and colours the datasets and the published weights share."""

from torchvision.datasets import Cityscapes

from deeplab.classes import ADE20K_CLASSES, ADE20K_CLASSES_WITH_OTHER, CITYSCAPES_CLASSES, VOC_CLASSES
from deeplab.data.ade20k import ADE20KSegmentation
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.voc import VOCSegmentation
from deeplab.palettes import CITYSCAPES_PALETTE


def test_cityscapes_names_and_colours_are_the_official_train_id_table():
    evaluated = sorted((c for c in Cityscapes.classes if 0 <= c.train_id < 255), key=lambda c: c.train_id)
    assert CITYSCAPES_CLASSES == tuple(c.name for c in evaluated)
    assert CITYSCAPES_PALETTE == [tuple(c.color) for c in evaluated]
    assert CityscapesSegmentation.classes == CITYSCAPES_CLASSES and CityscapesSegmentation.palette == CITYSCAPES_PALETTE


def test_counts_and_the_datasets_use_these_names():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[-1] == "tvmonitor"
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES_WITH_OTHER == ("other", *ADE20K_CLASSES) and ADE20K_CLASSES_WITH_OTHER[150] == "flag"
    assert VOCSegmentation.classes is VOC_CLASSES and ADE20KSegmentation.classes is ADE20K_CLASSES
