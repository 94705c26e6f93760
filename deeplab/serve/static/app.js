// The page of `deeplab serve`: send an image to /predict, show the overlay, the legend and the mask link.
"use strict";

const byId = (id) => document.getElementById(id);
let current = null; // the last JSON answer of /predict
let overlayTimer = null;

function setStatus(text, isError = false) {
  const status = byId("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function loadInfo() {
  try {
    const response = await fetch("info");
    const info = await response.json();
    const stride = info.output_stride ? `, output stride ${info.output_stride}` : "";
    byId("model-info").textContent = `${info.model}: ${info.num_classes} classes${stride} (${info.device}, ${info.precision})`;
    const mib = (info.limits.max_upload_bytes / 2 ** 20).toFixed(0);
    byId("limits").textContent = `${info.limits.formats.join(", ")}; up to ${mib} MiB and ${info.limits.max_side} px a side.`;
  } catch (err) {
    byId("model-info").textContent = `Cannot reach the server: ${err}`;
  }
}

async function predict(file) {
  setStatus(`Segmenting ${file.name || "the image"}…`);
  const form = new FormData();
  form.append("file", file, file.name || "image");
  let response;
  try {
    response = await fetch("predict", { method: "POST", body: form });
  } catch (err) {
    setStatus(`The server did not answer: ${err}`, true);
    return;
  }
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    setStatus(`${file.name || "The image"} was refused (${response.status}): ${body.detail}`, true);
    return;
  }
  show(body, file.name || "image");
}

function show(answer, name) {
  current = answer;
  byId("source").src = answer.links.image;
  updateOverlay();
  showLegend(answer.classes);
  const download = byId("download");
  download.href = answer.links.mask;
  download.download = `${name.replace(/\.[^.]*$/, "")}_mask.png`;
  byId("result").hidden = false;
  const present = answer.classes.length === 1 ? "1 class" : `${answer.classes.length} classes`;
  setStatus(`${name}: ${answer.width} × ${answer.height} px, ${present} present.`);
}

function showLegend(classes) {
  const rows = classes.map((item) => {
    const row = document.createElement("tr");
    row.dataset.classId = item.id;
    const swatch = document.createElement("td");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${item.color.join(",")})`;
    const name = document.createElement("td");
    name.textContent = item.name;
    const area = document.createElement("td");
    area.textContent = `${(100 * item.fraction).toFixed(1)}%`;
    area.title = `${item.pixels} pixels`;
    row.append(swatch, name, area);
    return row;
  });
  byId("legend").tBodies[0].replaceChildren(...rows);
}

function updateOverlay() {
  const alpha = byId("opacity").value / 100;
  byId("opacity-value").textContent = `${Math.round(alpha * 100)}%`;
  if (current) byId("overlay").src = `${current.links.overlay}?alpha=${alpha}`;
}

// The first file, whatever its name or type: the server judges what it holds, so a file that is not an
// image gets the same 415 message however it arrived (chosen, dropped or pasted).
function firstFile(files) {
  return (files && files.length) ? files[0] : null;
}

function setUp() {
  const drop = byId("drop");
  byId("file").addEventListener("change", (event) => {
    const file = firstFile(event.target.files);
    event.target.value = ""; // choosing the same file again must send it again
    if (file) predict(file);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = firstFile(event.dataTransfer.files);
    if (file) predict(file); else setStatus("That was not a file: drop an image file.", true);
  });
  document.addEventListener("paste", (event) => {
    const file = firstFile(event.clipboardData && event.clipboardData.files);
    if (file) predict(file);
  });
  byId("overlay").addEventListener("error", () => {
    if (current) setStatus("The server no longer has this result (it keeps the last few); drop the image again.", true);
  });
  byId("opacity").addEventListener("input", () => {
    byId("opacity-value").textContent = `${byId("opacity").value}%`;
    clearTimeout(overlayTimer);
    overlayTimer = setTimeout(updateOverlay, 60); // one request per pause, not one per pixel of travel
  });
  loadInfo();
}

setUp();
