// Draws a model's defect map over a frame <img> (the audit and labelling pages share this file).
//
// `where` is what the API answers (inspection.defectmap): `extent` (the frame rectangle the map
// covers), `box` (the half-maximum blob around the peak) and `peak`, all in the frame's own
// pixels; `src` is the map's 8-bit PNG (one pixel per cell, value = P(defect) x 255).
// Everything is placed in percent of the frame's natural size, so it stays on the defect when
// the page shrinks the frame or the engineer zooms it.
// A page whose <img> sits in its own `.defect-holder` (position: relative) keeps it; otherwise the
// <img> is wrapped in one here.
function drawDefectMap(img, where, src) {
  let holder = img.parentElement;
  if (holder && holder.classList.contains("defect-holder")) clearDefectMap(img);
  else {
    holder = document.createElement("div");
    holder.className = "defect-holder";
    holder.style.cssText = "position:relative;display:inline-block;line-height:0;overflow:hidden;max-width:100%";
    img.replaceWith(holder);
    holder.appendChild(img);
  }
  const layer = (testid, css) => {
    const el = document.createElement(testid === "defect-overlay" ? "canvas" : "div");
    el.dataset.testid = testid;
    el.style.cssText = "position:absolute;pointer-events:none;" + css;
    holder.appendChild(el);
    return el;
  };
  const overlay = layer("defect-overlay", "opacity:0.55");
  const box = layer("defect-box", "border:2px solid #ff1744;box-sizing:border-box");
  const peak = layer("defect-peak", "width:9px;height:9px;margin:-5px 0 0 -5px;border-radius:50%;" +
                     "background:#ff1744;border:1px solid #fff");
  box.title = "defect box: the cells half-way or more from the map's background to its peak (" +
    where.peak_value.toFixed(3) + ")";
  const place = () => {
    const w = img.naturalWidth, h = img.naturalHeight;
    if (!w || !h) return;
    const put = (el, x, y, bw, bh) => {
      el.style.left = (100 * x / w) + "%"; el.style.top = (100 * y / h) + "%";
      if (bw != null) { el.style.width = (100 * bw / w) + "%"; el.style.height = (100 * bh / h) + "%"; }
    };
    put(overlay, ...where.extent);
    put(box, ...where.box);
    put(peak, where.peak[0], where.peak[1]);
    holder.dataset.placed = "1";
  };
  // The map's cells as red, their value as opacity: hot cells show, cool ones leave the frame visible.
  const cells = new Image();
  cells.onload = () => {
    overlay.width = cells.naturalWidth; overlay.height = cells.naturalHeight;
    const ctx = overlay.getContext("2d");
    ctx.drawImage(cells, 0, 0);
    const px = ctx.getImageData(0, 0, overlay.width, overlay.height);
    for (let i = 0; i < px.data.length; i += 4) {
      const v = px.data[i];
      px.data[i] = 255; px.data[i + 1] = 23; px.data[i + 2] = 68; px.data[i + 3] = v;
    }
    ctx.putImageData(px, 0, 0);
  };
  cells.src = src;
  if (img.complete && img.naturalWidth) place(); else img.addEventListener("load", place, { once: true });
  return holder;
}

// Removes a drawn map (the labelling page reuses one <img> for every frame).
function clearDefectMap(img) {
  const holder = img.parentElement;
  if (!holder || !holder.classList.contains("defect-holder")) return;
  for (const el of [...holder.querySelectorAll("[data-testid^='defect-']")]) el.remove();
  delete holder.dataset.placed;
}
