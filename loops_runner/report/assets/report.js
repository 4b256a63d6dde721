// loops-runner report page: unpacks the inlined plotly.js, draws the figures,
// makes tables sortable and drives the rollouts and divergent-token browsers. No network access.
// The body's data-* attributes tell how rendering went (read by the tests).
(function () {
  "use strict";
  const body = document.body;
  const errors = [];

  function recordError(message) {
    errors.push(String(message));
    body.dataset.errors = JSON.stringify(errors);
    const box = document.getElementById("report-errors");
    if (box) {
      box.hidden = false;
      box.textContent = "This page hit an error: " + errors.join("; ");
    }
  }
  const consoleError = console.error.bind(console);
  console.error = (...args) => {
    recordError(args.join(" "));
    consoleError(...args);
  };
  window.addEventListener("error", (event) => recordError(event.message));
  window.addEventListener("unhandledrejection", (event) => recordError(event.reason));

  function jsonBlock(id) {
    const element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }

  // plotly.js is stored gzipped (base64) to keep the file small; the browser's
  // own DecompressionStream unpacks it.
  async function loadPlotly() {
    const packed = document.getElementById("plotly-js-gz").textContent.trim();
    const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const code = await new Response(stream).text();
    const script = document.createElement("script");
    script.textContent = code;
    document.head.appendChild(script);
  }

  async function drawFigures(figures, template) {
    let drawn = 0;
    for (const [id, figure] of Object.entries(figures)) {
      figure.layout.template = template;
      await Plotly.newPlot(id, figure.data, figure.layout,
        { displaylogo: false, responsive: true });
      drawn += 1;
    }
    body.dataset.plotsDrawn = String(drawn);
  }

  // -- sortable tables ---------------------------------------------------------
  function cellKey(cell) {
    const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
    const number = Number(raw);
    return raw.trim() !== "" && Number.isFinite(number) ? number : raw.toLowerCase();
  }

  function sortBy(table, column, header) {
    const tbody = table.tBodies[0];
    const ascending = header.dataset.sorted !== "asc";
    for (const th of table.tHead.rows[0].cells) delete th.dataset.sorted;
    header.dataset.sorted = ascending ? "asc" : "desc";
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {
      const x = cellKey(a.cells[column]);
      const y = cellKey(b.cells[column]);
      // Numbers before text (so "-" for a missing value sinks), then by value.
      if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
      const order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    for (const row of rows) tbody.appendChild(row);
  }

  function setupSortableTables() {
    for (const table of document.querySelectorAll("table.sortable")) {
      Array.from(table.tHead.rows[0].cells).forEach((header, column) => {
        header.title = "sort by this column";
        header.addEventListener("click", () => sortBy(table, column, header));
      });
    }
  }

  // -- rollouts browser --------------------------------------------------------
  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function formatNumber(value) {
    return typeof value === "number" ? value.toFixed(3) : "-";
  }

  function mean(values) {
    const numbers = values.filter((v) => typeof v === "number");
    return numbers.length ? numbers.reduce((a, b) => a + b, 0) / numbers.length : null;
  }

  function groupCard(group) {
    const card = element("div", "group");
    const versions = group.policy_version === null ? "?" : group.policy_version;
    card.appendChild(element("div", "group-head",
      `group ${group.group} · policy version ${versions} · mean reward ` +
      formatNumber(mean(group.rewards))));
    card.appendChild(element("pre", "prompt", group.prompt));
    const table = element("table", "completions");
    const head = table.createTHead().insertRow();
    for (const name of ["#", "completion", "reward", "advantage"]) {
      head.appendChild(element("th", null, name));
    }
    const rows = table.createTBody();
    group.completions.forEach((completion, index) => {
      const row = rows.insertRow();
      const advantage = group.advantages[index];
      if (typeof advantage === "number" && advantage !== 0) {
        row.className = advantage > 0 ? "positive" : "negative";
      }
      row.appendChild(element("td", "num", String(index)));
      row.appendChild(element("td", "completion", completion));
      row.appendChild(element("td", "num", formatNumber(group.rewards[index])));
      row.appendChild(element("td", "num", formatNumber(advantage)));
    });
    card.appendChild(table);
    return card;
  }

  // A step picker (select, previous, next) over ``data.steps``; ``render`` fills the
  // view for one step and returns the summary line.
  function setupStepBrowser(name, data, render) {
    const select = document.getElementById(`${name}-step`);
    const view = document.getElementById(`${name}-view`);
    const summary = document.getElementById(`${name}-summary`);
    data.steps.forEach((entry, index) => {
      const option = element("option", null, `step ${entry.step}`);
      option.value = String(index);
      select.appendChild(option);
    });
    function show(index) {
      select.value = String(index);
      summary.textContent = render(data.steps[index], view);
    }
    select.addEventListener("change", () => show(Number(select.value)));
    document.getElementById(`${name}-prev`).addEventListener("click", () =>
      show(Math.max(0, Number(select.value) - 1)));
    document.getElementById(`${name}-next`).addEventListener("click", () =>
      show(Math.min(data.steps.length - 1, Number(select.value) + 1)));
    if (data.steps.length) show(data.steps.length - 1);
  }

  function showRolloutStep(entry, view) {
    view.replaceChildren(...entry.groups.map(groupCard));
    const rewards = entry.groups.flatMap((g) => g.rewards);
    return `${entry.groups.length} group(s), ` +
      `${rewards.length} completion(s), mean reward ${formatNumber(mean(rewards))}`;
  }

  function showDivergenceStep(entry, view) {
    const table = element("table", "divergent");
    const head = table.createTHead().insertRow();
    const columns = ["context", "token", "sampler logprob", "trainer logprob", "diff",
                     "advantage", "sequence", "position"];
    for (const name of columns) head.appendChild(element("th", null, name));
    const rows = table.createTBody();
    for (const token of entry.tokens) {
      const row = rows.insertRow();
      row.appendChild(element("td", "completion", token.context));
      row.appendChild(element("td", "completion", JSON.stringify(token.token)));
      for (const key of ["sampler_logprob", "trainer_logprob", "diff", "advantage"]) {
        row.appendChild(element("td", "num", formatNumber(token[key])));
      }
      row.appendChild(element("td", "num", String(token.sequence)));
      row.appendChild(element("td", "num", String(token.position)));
    }
    view.replaceChildren(table);
    const worst = entry.tokens.length ? Math.abs(entry.tokens[0].diff) : null;
    return `${entry.tokens.length} token(s), largest |diff| ${formatNumber(worst)}`;
  }

  async function main() {
    setupSortableTables();
    const rollouts = jsonBlock("report-rollouts");
    if (rollouts) setupStepBrowser("rollout", rollouts, showRolloutStep);
    const divergence = jsonBlock("report-divergence");
    if (divergence) setupStepBrowser("divergence", divergence, showDivergenceStep);
    const figures = jsonBlock("report-figures") || {};
    if (Object.keys(figures).length) {
      await loadPlotly();
      await drawFigures(figures, jsonBlock("report-template"));
    } else {
      body.dataset.plotsDrawn = "0";
    }
    body.dataset.render = errors.length ? "failed" : "done";
  }

  main().catch((error) => {
    recordError(error && error.stack ? error.stack : error);
    body.dataset.render = "failed";
  });
})();
