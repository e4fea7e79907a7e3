// The search-tree viewer (rstar_jax/tree_view.py writes the data; this script draws it).
// The tree is laid out left to right: a node's x is its depth, each visible leaf takes a row
// and a parent sits midway between its first and last child. Collapsing a node hides its
// subtree and lays the rest out again. Only the nodes and edges in a band around the scrolled
// view are in the page (the drawing's size is the whole tree's): a tree of thousands of nodes
// draws, scrolls and folds as fast as a small one.
(function () {
  "use strict";
  const started = performance.now();
  const D = JSON.parse(document.getElementById("tree-data").textContent);
  const N = D.nodes;
  const n = N.parent.length;
  const DX = 150, DY = 22, PAD = 24;

  const kids = Array.from({ length: n }, () => []);
  for (let i = 1; i < n; i++) kids[N.parent[i]].push(i);
  const size = new Int32Array(n).fill(1);  // nodes in each subtree
  for (let i = n - 1; i > 0; i--) size[N.parent[i]] += size[i];
  const collapsed = new Uint8Array(n);
  const maxVisits = Math.max(1, ...N.visits);

  // Highlights: the selected answer's path, the SFT trajectories, the PPM pairs by node.
  const onAnswerPath = new Set(D.answer_path);
  const sftEdges = new Set();
  const sftOf = new Map();  // node -> ranks of the SFT examples through it
  D.sft.forEach((s, rank) => {
    for (const v of s.path) {
      sftEdges.add(v);
      if (!sftOf.has(v)) sftOf.set(v, []);
      sftOf.get(v).push(rank + 1);
    }
  });
  const pairsAt = new Map();
  for (const p of D.pairs) {
    const at = p.kind === "step" ? p.node : 0;
    if (!pairsAt.has(at)) pairsAt.set(at, []);
    pairsAt.get(at).push(p);
  }

  const KIND_NAMES = { root: "root", ran: "code ran", failed: "code failed",
    correct: "correct answer", wrong: "wrong answer", answer: "answer (no reference)",
    open: "open (not expanded)" };

  function fmtQ(q) { return q === null ? "NaN" : (q >= 0 ? "+" : "") + q.toFixed(2); }
  function pathTo(v) {  // root's child .. v
    const out = [];
    while (v > 0) { out.push(v); v = N.parent[v]; }
    return out.reverse();
  }

  // --- layout and drawing ------------------------------------------------------------------

  function layout() {
    const x = new Float64Array(n), y = new Float64Array(n), visible = [];
    let row = 0, maxDepth = 0;
    // Iterative post-order walk (deep trees must not overflow the call stack).
    const stack = [[0, 0]];
    while (stack.length) {
      const top = stack[stack.length - 1];
      const v = top[0];
      const ks = collapsed[v] ? [] : kids[v];
      if (top[1] === 0) { visible.push(v); x[v] = PAD + N.depth[v] * DX; maxDepth = Math.max(maxDepth, N.depth[v]); }
      if (top[1] < ks.length) { stack.push([ks[top[1]], 0]); top[1]++; continue; }
      stack.pop();
      y[v] = ks.length ? (y[ks[0]] + y[ks[ks.length - 1]]) / 2 : PAD + (row++) * DY;
    }
    return { x, y, visible, width: PAD * 2 + maxDepth * DX + 140, height: PAD * 2 + Math.max(row - 1, 0) * DY };
  }

  let L = null, selected = -1, band = [0, 0];
  const canvas = document.getElementById("canvas");
  const SVG = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(SVG, "svg");
  canvas.append(svg);

  function relayout() {  // the drawing takes the whole tree's size, so the view can scroll anywhere
    L = layout();
    svg.setAttribute("width", L.width);
    svg.setAttribute("height", L.height);
  }

  function render() {  // after a fold: lay out again, and draw
    relayout();
    draw();
  }

  function draw() {
    const { x, y, visible } = L;
    const h = canvas.clientHeight || 800;
    const top = canvas.scrollTop - h, bottom = canvas.scrollTop + 2 * h;
    band = [top, bottom];
    const edges = { edge: [], "edge-sft": [], "edge-answer": [] };
    const parts = [];
    for (const v of visible) {
      if (v > 0) {
        const p = N.parent[v];
        if (Math.max(y[p], y[v]) < top || Math.min(y[p], y[v]) > bottom) continue;
        const d = `M${x[p]},${y[p]}C${x[p] + DX / 2},${y[p]} ${x[v] - DX / 2},${y[v]} ${x[v]},${y[v]}`;
        edges.edge.push(d);
        if (sftEdges.has(v)) edges["edge-sft"].push(d);
        if (onAnswerPath.has(v)) edges["edge-answer"].push(d);
      }
    }
    for (const v of visible) {
      if (y[v] < top || y[v] > bottom) continue;
      const r = 3.5 + 7 * Math.sqrt(N.visits[v] / maxVisits);
      let cls = `node k-${N.kind[v]}`;
      if (v === selected) cls += " selected";
      if (v === D.answer_node) cls += " chosen";
      let g = `<g class="${cls}" data-id="${v}" transform="translate(${x[v]},${y[v]})">` +
        (v === selected ? `<circle class="halo" r="${(r + 5).toFixed(1)}"></circle>` : "") +
        `<circle r="${r.toFixed(1)}"></circle>` +
        `<text x="${(r + 13).toFixed(1)}" y="3.5">N${N.visits[v]} Q${fmtQ(N.q[v])}` +
        (N.scored[v] ? ` v${fmtQ(N.ppm[v])}` : "") + `</text>`;
      if (pairsAt.has(v)) g += `<text class="badge" x="${(r + 13).toFixed(1)}" y="-6">\u21c4${pairsAt.get(v).length}</text>`;
      g += "</g>";
      if (kids[v].length) {
        g += `<g class="toggle" data-id="${v}" transform="translate(${x[v] + r + 6},${y[v]})">` +
          `<rect x="-5" y="-5" width="10" height="10" rx="2"></rect>` +
          `<text x="0" y="3.5" text-anchor="middle">${collapsed[v] ? "+" : "\u2212"}</text></g>`;
        if (collapsed[v]) g += `<text class="hidden-count" x="${x[v] + r + 14}" y="${y[v] + 14}">${size[v] - 1} hidden</text>`;
      }
      parts.push(g);
    }
    const paths = Object.entries(edges).map(([c, ds]) => ds.length ? `<path class="${c}" d="${ds.join("")}"></path>` : "").join("");
    svg.innerHTML = paths + parts.join("");
  }

  // --- the details panel ----------------------------------------------------------------------

  const panel = document.getElementById("panel");

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  function link(v, label) {
    const a = el("a", { class: "node-link", "data-goto": v }, label === undefined ? `#${v}` : label);
    return a;
  }
  function section(title, body) {
    panel.append(el("h3", {}, title), body);
  }
  function pre(text, cls, id) {
    const attrs = {};
    if (cls) attrs.class = cls;
    if (id) attrs.id = id;
    return el("pre", attrs, text);
  }

  // The program a step runs: the code of its ancestors whose code ran, then its own
  // (`steps.format.assemble_program`; `code` holds each step's code with its newline).
  function program(v) {
    const p = pathTo(v);
    return p.filter((u) => u === v || N.valid[u]).map((u) => N.code[u]).join("");
  }

  function show(v) {
    selected = v;
    panel.replaceChildren();
    const kind = N.kind[v];
    panel.append(el("h2", { id: "node-title" }, v === 0 ? "Root (the question)" :
      `Node #${v}: ${KIND_NAMES[kind]}`));
    const facts = el("table", { id: "node-facts" });
    const row = (k, val) => facts.append(el("tr", {}, el("td", {}, k), el("td", {}, val)));
    row("depth", N.depth[v]);
    row("visits N", N.visits[v]);
    row("Q (W / N)", fmtQ(N.q[v]));
    row("PPM value", N.scored[v] ? fmtQ(N.ppm[v]) : "not scored");
    if (N.answer[v]) row(D.graded ? "reward" : "PPM score", fmtQ(N.reward[v]));
    if (N.errors[v]) row("failing steps in a row", N.errors[v]);
    if (N.terminal[v]) row("terminal", "yes");
    if (kids[v].length) row("children", kids[v].length);
    panel.append(facts);
    if (v === D.answer_node) panel.append(el("p", {}, "The search's selected answer (highest Q)."));
    if (sftOf.has(v)) panel.append(el("p", {}, `On SFT example ${sftOf.get(v).join(", ")}.`));
    if (v === 0) {
      section("Question", pre(D.problem.question, "", "node-text"));
    } else {
      section("Step", pre(N.text[v], "", "node-text"));
      // A failed step with no error kept never ran: it did not finish (no terminator, or a step
      // token out of place), so the executor never saw it.
      const unfinished = !N.valid[v] && !N.output[v] && D.outputs_kept;
      if (N.code[v] && !N.answer[v]) {
        if (unfinished) section("Code (never ran: the step did not finish)", pre(N.code[v], "", "node-program"));
        else section("Program", pre(program(v), "", "node-program"));
      }
      const note = (text) => el("p", { class: "empty", id: "node-output" }, text);
      if (!D.outputs_kept && N.code[v] && !N.answer[v]) {
        section("Output", note("(not kept: this tree was written before trees kept their outputs)"));
      } else if (!N.valid[v] && !unfinished) {
        section("Error", pre(N.output[v], "error", "node-output"));
      } else if (N.code[v] && !N.answer[v] && !unfinished) {
        section("Output", N.output[v] ? pre(N.output[v], "", "node-output") : note("(printed nothing)"));
      }
    }
    const pairs = pairsAt.get(v) || [];
    if (pairs.length) {
      const list = el("ol", { id: "node-pairs" });
      for (const p of pairs) {
        list.append(el("li", {}, p.kind === "final" ? "final-step pair: " : "", link(p.pos),
          ` (Q ${fmtQ(p.q_pos)}) preferred over `, link(p.neg), ` (Q ${fmtQ(p.q_neg)})`));
      }
      section(`PPM pairs extracted here (${pairs.length})`, list);
    }
    if (v > 0) {
      const list = el("ol", { id: "node-path" });
      for (const u of pathTo(v)) {
        const first = N.text[u].split("\n").map((s) => s.replace("<code>", "").trim()).find((s) => s) || "";
        list.append(el("li", {}, link(u), ` ${KIND_NAMES[N.kind[u]]}: ${first.slice(0, 90)}`));
      }
      section("Path from the root", list);
    }
    if (kids[v].length) {
      const list = el("ol", {});
      for (const c of kids[v]) list.append(el("li", {}, link(c), ` ${KIND_NAMES[N.kind[c]]}, N=${N.visits[c]}, Q=${fmtQ(N.q[c])}`));
      section("Children", list);
    }
  }

  function reveal(v) {  // unfolds v's ancestors and scrolls v into the middle of the view
    let folded = false;
    for (let u = N.parent[v]; u >= 0; u = N.parent[u]) { folded ||= collapsed[u]; collapsed[u] = 0; }
    if (folded || L === null) relayout();
    canvas.scrollTo({ left: Math.max(0, L.x[v] - canvas.clientWidth / 3),
                      top: Math.max(0, L.y[v] - canvas.clientHeight / 2) });
    draw();
  }

  function select(v, scroll) {
    show(v);
    if (scroll) reveal(v);
    else draw();
  }

  // --- events ---------------------------------------------------------------------------------

  canvas.addEventListener("click", (e) => {
    const t = e.target.closest(".toggle");
    if (t) { const v = +t.dataset.id; collapsed[v] ^= 1; render(); return; }
    const g = e.target.closest(".node");
    if (g) select(+g.dataset.id, false);
  });
  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  }
  canvas.addEventListener("scroll", () => {  // draw a new band before the view leaves this one
    const h = canvas.clientHeight, t = canvas.scrollTop;
    if (t - band[0] < h / 2 || band[1] - (t + h) < h / 2) redraw();
  });
  window.addEventListener("resize", redraw);  // a taller view needs a taller band
  // A tooltip with the node's step, for the node under the pointer (one element for the page,
  // not one per node: a tree of thousands of nodes draws faster without them).
  const tip = document.getElementById("tip");
  canvas.addEventListener("mouseover", (e) => {
    const g = e.target.closest(".node");
    if (!g) { tip.hidden = true; return; }
    const v = +g.dataset.id;
    tip.textContent = `#${v} ${KIND_NAMES[N.kind[v]]}  N=${N.visits[v]} Q=${fmtQ(N.q[v])}` +
      (N.scored[v] ? ` PPM=${fmtQ(N.ppm[v])}` : "") + "\n" + N.text[v].slice(0, 400);
    const box = g.getBoundingClientRect();
    tip.style.left = `${box.right + 8}px`;
    tip.style.top = `${box.top}px`;
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  panel.addEventListener("click", (e) => {
    const a = e.target.closest("[data-goto]");
    if (a) select(+a.dataset.goto, true);
  });
  document.getElementById("expand-all").addEventListener("click", () => { collapsed.fill(0); render(); });
  document.getElementById("collapse-all").addEventListener("click", () => {
    for (let v = 0; v < n; v++) collapsed[v] = kids[v].length && N.depth[v] >= 1 ? 1 : 0;
    render();
  });
  const toAnswer = document.getElementById("to-answer");
  if (D.answer_node >= 0) toAnswer.addEventListener("click", () => select(D.answer_node, true));
  else toAnswer.disabled = true;

  select(D.answer_node >= 0 ? D.answer_node : 0, true);
  // For tests and the console: the nodes laid out (not folded away), in drawing order.
  window.treeViewer = { select, reveal, render, shown: () => L.visible.slice(),
                        renderMs: performance.now() - started };
  document.body.dataset.ready = "1";
})();
