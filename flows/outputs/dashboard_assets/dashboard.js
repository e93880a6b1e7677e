/* The energy dashboard: window.__dashboard__ as sortable tables and inline SVG charts.
   Large tables come from lazy files (window.__lazy__), loaded with <script> tags. */
(function () {
  "use strict";

  const D = window.__dashboard__;
  const LAZY = (window.__lazy__ = window.__lazy__ || {});
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = { Electricité: "#1f6fb2", Gaz: "#d9730d" };
  const FILIERES = { Electricité: "Électricité", Gaz: "Gaz" };
  const SECTEURS = {
    AGRICULTURE: "Agriculture",
    INDUSTRIE: "Industrie",
    TERTIAIRE: "Tertiaire",
    RESIDENTIEL: "Résidentiel",
    INCONNU: "Non affecté",
  };
  const STATUSES = { ok: "OK", warning: "Alerte", skipped: "Non évalué" };
  const NUMBER = {
    int: new Intl.NumberFormat("fr-FR", { maximumFractionDigits: 0 }),
    mwh: new Intl.NumberFormat("fr-FR", { maximumFractionDigits: 1 }),
    mean: new Intl.NumberFormat("fr-FR", { minimumFractionDigits: 2, maximumFractionDigits: 2 }),
    axis: new Intl.NumberFormat("fr-FR", { maximumFractionDigits: 1 }),
  };
  const STAMP = new Intl.DateTimeFormat("fr-FR", {
    dateStyle: "long", timeStyle: "short", timeZone: "Europe/Paris",
  });
  const MONTH = new Intl.DateTimeFormat("fr-FR", { month: "short", timeZone: "UTC" });
  const COLLATOR = new Intl.Collator("fr", { numeric: true, sensitivity: "base" });
  const NUMERIC = new Set(["int", "mwh", "mean"]);
  const ADDRESS_LIMIT = 1000;
  const MEASURES = [
    { key: "nb_sites", label: "Sites", kind: "int" },
    { key: "conso_totale_mwh", label: "Consommation totale (MWh)", kind: "mwh" },
    { key: "conso_moyenne_mwh", label: "Moyenne par site (MWh)", kind: "mean" },
    { key: "nb_lignes_masquees", label: "Lignes masquées", kind: "int" },
  ];

  const state = {
    annee: D.default_year == null ? "" : String(D.default_year),
    filiere: D.filieres[0],
    secteur: "",
    region: "",
    departement: "",
    commune: "",
  };
  const sorts = {};
  let pending = 0;

  /* ---------- DOM helpers ---------- */

  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) el.append(child);
    }
    return el;
  }

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
    if (parent) parent.append(el);
    return el;
  }

  function empty(container, text) {
    container.replaceChildren(h("p", { class: "empty" }, text || "Aucune donnée"));
  }

  /* ---------- numbers ---------- */

  const isNull = (v) => v === null || v === undefined || v === "";
  const add = (a, b) => (isNull(b) ? a : isNull(a) ? b : a + b);
  const mean = (total, count) => (!isNull(total) && count > 0 ? total / count : null);
  const filiereLabel = (f) => FILIERES[f] || f;
  const secteurLabel = (s) => (isNull(s) ? "—" : SECTEURS[s] || s);
  const regionName = (code) => D.regions[code] || code;
  const departementName = (code) => (D.departements[code] && D.departements[code][0]) || code;

  /* ISO 8601 only: Date.parse reads text such as "x 1" as a date (2001), not as text. */
  const ISO_INSTANT = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/i;

  function stamp(value) {
    const text = String(value);
    const time = ISO_INSTANT.test(text) ? Date.parse(text) : NaN;
    return Number.isNaN(time) ? text : STAMP.format(new Date(time));
  }

  function format(kind, value) {
    if (isNull(value)) return "—";
    if (kind === "int") return NUMBER.int.format(value);
    if (kind === "mwh") return NUMBER.mwh.format(value);
    if (kind === "mean") return NUMBER.mean.format(value);
    if (kind === "stamp") return stamp(value);
    if (kind === "list") return value.join(", ");
    return String(value);
  }

  function unitFor(max) {
    if (max >= 1e6) return { div: 1e6, label: "TWh" };
    if (max >= 1e3) return { div: 1e3, label: "GWh" };
    return { div: 1, label: "MWh" };
  }

  function energy(value) {
    const unit = unitFor(Math.abs(value));
    return `${NUMBER.axis.format(value / unit.div)} ${unit.label}`;
  }

  /* ---------- lazy data ---------- */

  function busy(delta) {
    pending += delta;
    document.documentElement.dataset.pending = String(pending);
  }

  const loading = {};
  function load(path) {
    if (path in LAZY) return Promise.resolve(LAZY[path]);
    if (!loading[path]) {
      loading[path] = new Promise((resolve, reject) => {
        const script = h("script", { src: `${D.data_dir}/${path}.js` });
        script.onload = () => resolve(LAZY[path]);
        script.onerror = () => {
          delete loading[path];
          reject(new Error(path));
        };
        document.head.append(script);
      });
    }
    return loading[path];
  }

  /** Calls back with the lazy document (null if it cannot be loaded), while still current. */
  function request(path, isCurrent, callback) {
    busy(+1);
    load(path)
      .then((doc) => isCurrent() && callback(doc || null), () => isCurrent() && callback(null))
      .finally(() => busy(-1));
  }

  /* ---------- tables ---------- */

  function compare(a, b, kind, dir) {
    if (isNull(a) || isNull(b)) return isNull(a) === isNull(b) ? 0 : isNull(a) ? 1 : -1;
    const order = NUMERIC.has(kind) ? a - b : COLLATOR.compare(String(a), String(b));
    return dir === "asc" ? order : -order;
  }

  function cell(column, value) {
    const raw = isNull(value) ? "" : Array.isArray(value) ? value.join(",") : String(value);
    return h(
      "td",
      {
        "data-col": column.key,
        "data-value": raw,
        class: [NUMERIC.has(column.kind) ? "num" : "", column.className ? column.className(value) : ""]
          .join(" ").trim() || null,
      },
      column.render ? column.render(value) : format(column.kind, value),
    );
  }

  /** A sortable table (click a header); rows are {key, values, selected}. */
  function dataTable(container, id, columns, rows, options) {
    const opts = options || {};
    if (!rows.length) {
      empty(container, opts.emptyText);
      return;
    }
    const limit = opts.limit || Infinity;
    const draw = () => {
      const sort = sorts[id] || opts.sort || { key: columns[0].key, dir: "asc" };
      const column = columns.find((c) => c.key === sort.key) || columns[0];
      const sorted = rows
        .slice()
        .sort((a, b) => compare(a.values[column.key], b.values[column.key], column.kind, sort.dir));
      const headers = columns.map((c) =>
        h(
          "th",
          {
            scope: "col",
            "data-key": c.key,
            class: NUMERIC.has(c.kind) ? "num" : null,
            "aria-sort": c === column ? (sort.dir === "asc" ? "ascending" : "descending") : "none",
            onclick: () => {
              const dir = c === column ? (sort.dir === "asc" ? "desc" : "asc") : NUMERIC.has(c.kind) ? "desc" : "asc";
              sorts[id] = { key: c.key, dir };
              draw();
            },
          },
          c.label,
        ),
      );
      const body = sorted.slice(0, limit).map((row) =>
        h(
          "tr",
          {
            "data-key": row.key,
            class: [opts.onRow ? "clickable" : "", row.selected ? "selected" : ""].join(" ").trim() || null,
            onclick: opts.onRow ? () => opts.onRow(row.key) : null,
          },
          columns.map((c) => cell(c, row.values[c.key])),
        ),
      );
      const footer = opts.footer
        ? h("tfoot", null, h("tr", { "data-key": "total" }, columns.map((c) => cell(c, opts.footer[c.key]))))
        : null;
      const table = h(
        "table",
        { id, class: "data", "data-rows": String(rows.length) },
        h("thead", null, h("tr", null, headers)),
        h("tbody", null, body),
        footer,
      );
      const parts = [h("div", { class: "table-wrap" }, table)];
      if (sorted.length > limit) {
        parts.push(h("p", { class: "note" },
          `${NUMBER.int.format(limit)} premières lignes affichées sur ${NUMBER.int.format(sorted.length)} ; triez ou filtrez pour voir les autres.`));
      }
      container.replaceChildren(...parts);
    };
    draw();
  }

  /** ORE rows [code, grand secteur, sites, total, masked] summed per code. */
  function totals(rows, secteur) {
    const byCode = new Map();
    for (const [code, sector, sites, total, masked] of rows) {
      if (secteur && sector !== secteur) continue;
      const acc = byCode.get(code) || { nb_sites: null, conso_totale_mwh: null, nb_lignes_masquees: 0 };
      acc.nb_sites = add(acc.nb_sites, sites);
      acc.conso_totale_mwh = add(acc.conso_totale_mwh, total);
      acc.nb_lignes_masquees += masked || 0;
      byCode.set(code, acc);
    }
    for (const acc of byCode.values()) acc.conso_moyenne_mwh = mean(acc.conso_totale_mwh, acc.nb_sites);
    return byCode;
  }

  function footerOf(rows, label, labelKey) {
    const sum = { nb_sites: null, conso_totale_mwh: null, nb_lignes_masquees: 0, [labelKey]: label };
    for (const { values } of rows) {
      sum.nb_sites = add(sum.nb_sites, values.nb_sites);
      sum.conso_totale_mwh = add(sum.conso_totale_mwh, values.conso_totale_mwh);
      sum.nb_lignes_masquees += values.nb_lignes_masquees || 0;
    }
    sum.conso_moyenne_mwh = mean(sum.conso_totale_mwh, sum.nb_sites);
    return sum;
  }

  const pick = (nested) => (nested && nested[state.annee] && nested[state.annee][state.filiere]) || [];
  const noRows = () => `Aucune donnée pour ${state.annee} (${filiereLabel(state.filiere).toLowerCase()})`;

  /* ---------- charts ---------- */

  const W = 720;
  const H = 280;
  const M = { top: 22, right: 14, bottom: 34, left: 58 };

  function niceTicks(max) {
    if (!(max > 0)) return [0, 1];
    const raw = max / 5;
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / magnitude;
    const step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * magnitude;
    const ticks = [0];
    while (ticks[ticks.length - 1] < max * (1 - 1e-9)) ticks.push(ticks[ticks.length - 1] + step);
    return ticks;
  }

  function frame(id, label, max) {
    const unit = unitFor(max);
    const ticks = niceTicks(max / unit.div);
    const top = ticks[ticks.length - 1] * unit.div;
    const root = svg("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
    const y = (v) => M.top + (H - M.top - M.bottom) * (1 - v / top);
    for (const tick of ticks) {
      const at = y(tick * unit.div);
      svg("line", { class: "grid", x1: M.left, x2: W - M.right, y1: at, y2: at }, root);
      svg("text", { x: M.left - 6, y: at + 4, "text-anchor": "end" }, root).textContent = NUMBER.axis.format(tick);
    }
    svg("text", { x: M.left - 6, y: 12, "text-anchor": "end" }, root).textContent = unit.label;
    svg("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }, root);
    return { root, y, unit };
  }

  function legend(series) {
    return h("div", { class: "legend" },
      series.map((s) => h("span", null, h("i", { style: `background:${s.color}` }), s.label)));
  }

  /** Grouped bars: categories [{key, label}], series [{name, label, color, values}]. */
  function barChart(container, id, label, categories, series, current) {
    const values = series.flatMap((s) => s.values).filter((v) => !isNull(v));
    if (!categories.length || !values.length) {
      empty(container);
      return;
    }
    const { root, y, unit } = frame(id, label, Math.max(0, ...values));
    const band = (W - M.left - M.right) / categories.length;
    const inner = band * 0.75;
    const width = inner / series.length;
    categories.forEach((category, i) => {
      const left = M.left + band * i + (band - inner) / 2;
      series.forEach((s, j) => {
        const value = s.values[i];
        if (isNull(value)) return;
        const mark = svg("rect", {
          class: String(category.key) === String(current) ? "mark current" : "mark",
          x: (left + j * width).toFixed(1),
          y: y(Math.max(0, value)).toFixed(1),
          width: Math.max(1, width - 2).toFixed(1),
          height: Math.max(0, y(0) - y(Math.max(0, value))).toFixed(1),
          fill: s.color,
          "data-series": s.name,
          "data-category": category.key,
          "data-value": String(value),
        }, root);
        svg("title", {}, mark).textContent =
          `${category.label} · ${s.label} : ${NUMBER.axis.format(value / unit.div)} ${unit.label}`;
      });
      svg("text", { x: (M.left + band * (i + 0.5)).toFixed(1), y: H - M.bottom + 16, "text-anchor": "middle" }, root)
        .textContent = category.label;
    });
    container.replaceChildren(legend(series), root);
  }

  /** Lines over days: dates ['YYYY-MM-DD'], series [{name, label, color, values}]. */
  function lineChart(container, id, label, dates, series) {
    const values = series.flatMap((s) => s.values).filter((v) => !isNull(v));
    if (!dates.length || !values.length) {
      empty(container);
      return;
    }
    const { root, y } = frame(id, label, Math.max(0, ...values));
    const times = dates.map((d) => Date.parse(`${d}T00:00:00Z`));
    const first = times[0];
    const last = times[times.length - 1] > first ? times[times.length - 1] : first + 864e5;
    const x = (t) => M.left + ((W - M.left - M.right) * (t - first)) / (last - first);
    const start = new Date(first);
    for (let month = 0; ; month++) {
      const tick = Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + month, 1);
      if (tick > last) break;
      if (tick < first) continue;
      svg("line", { class: "grid", x1: x(tick), x2: x(tick), y1: M.top, y2: H - M.bottom }, root);
      svg("text", { x: x(tick) + 2, y: H - M.bottom + 16 }, root).textContent = MONTH.format(new Date(tick));
    }
    for (const s of series) {
      let path = "";
      let points = 0;
      let pen = false;
      s.values.forEach((value, i) => {
        if (isNull(value)) {
          pen = false;
          return;
        }
        path += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)},${y(value).toFixed(1)}`;
        pen = true;
        points++;
      });
      if (!points) continue;
      const mark = svg("path", { class: "mark", d: path, stroke: s.color, "data-series": s.name, "data-points": String(points) }, root);
      svg("title", {}, mark).textContent = s.label;
    }
    container.replaceChildren(legend(series), root);
  }

  /* ---------- filters ---------- */

  function fill(select, items, value, placeholder) {
    const choices = items.map(([v, label]) => h("option", { value: v }, label));
    select.replaceChildren(...(placeholder ? [h("option", { value: "" }, placeholder)] : []), ...choices);
    const known = items.some(([v]) => v === value);
    select.value = known ? value : placeholder || !items.length ? "" : items[0][0];
    return select.value;
  }

  function syncFilters() {
    state.annee = fill($("f-annee"), D.years.map((y) => [String(y), String(y)]), state.annee);
    state.filiere = fill($("f-filiere"), D.filieres.map((f) => [f, filiereLabel(f)]), state.filiere);
    state.secteur = fill($("f-secteur"), D.secteurs.map((s) => [s, secteurLabel(s)]), state.secteur, "Tous les secteurs");
    const regions = Object.keys(D.regions).sort((a, b) => COLLATOR.compare(regionName(a), regionName(b)));
    state.region = fill($("f-region"), regions.map((c) => [c, regionName(c)]), state.region, "Toutes les régions");
    const departements = Object.keys(D.departements)
      .filter((c) => !state.region || D.departements[c][1] === state.region)
      .sort(COLLATOR.compare);
    state.departement = fill($("f-departement"), departements.map((c) => [c, `${c} – ${departementName(c)}`]),
      state.departement, "Tous les départements");
    if (!state.departement) {
      state.commune = fill($("f-commune"), [], "", "Choisissez un département");
      $("f-commune").disabled = true;
    }
    for (const el of document.querySelectorAll(".annee")) el.textContent = state.annee;
  }

  function fillCommunes(doc) {
    const names = doc ? doc.names : {};
    const codes = Object.keys(names).sort((a, b) => COLLATOR.compare(names[a] || a, names[b] || b));
    const label = (c) => {
      const count = doc.adresses[c];
      return `${names[c] || c} (${c})${count ? ` · ${NUMBER.int.format(count)} adresses` : ""}`;
    };
    state.commune = fill($("f-commune"), codes.map((c) => [c, label(c)]), state.commune, "Toutes les communes");
    $("f-commune").disabled = !codes.length;
  }

  function selectRegion(code) {
    state.region = code;
    state.departement = "";
    state.commune = "";
    render();
  }

  function selectDepartement(code) {
    state.departement = code;
    state.commune = "";
    if (code && D.departements[code] && D.departements[code][1]) state.region = D.departements[code][1];
    render();
  }

  function selectCommune(code) {
    state.commune = code;
    render();
  }

  /* ---------- views ---------- */

  function renderNationale() {
    if (!D.nationale) {
      empty($("nationale-body"));
    } else {
      const years = Object.keys(D.nationale).sort();
      const rows = years.map((y) => {
        const [electricite, gaz, total] = D.nationale[y][0];
        return { key: y, selected: y === state.annee, values: { annee: y, electricite_mwh: electricite, gaz_mwh: gaz, total_mwh: total } };
      });
      const body = $("nationale-body");
      const chart = h("div");
      const table = h("div");
      body.replaceChildren(chart, table);
      barChart(chart, "chart-nationale", "Consommation nationale annuelle par filière",
        years.map((y) => ({ key: y, label: y })),
        [
          { name: "electricite", label: "Électricité", color: COLORS.Electricité, values: rows.map((r) => r.values.electricite_mwh) },
          { name: "gaz", label: "Gaz", color: COLORS.Gaz, values: rows.map((r) => r.values.gaz_mwh) },
        ],
        state.annee);
      dataTable(table, "table-nationale", [
        { key: "annee", label: "Année", kind: "text" },
        { key: "electricite_mwh", label: "Électricité (MWh)", kind: "mwh" },
        { key: "gaz_mwh", label: "Gaz (MWh)", kind: "mwh" },
        { key: "total_mwh", label: "Total (MWh)", kind: "mwh" },
      ], rows, { sort: { key: "annee", dir: "asc" } });
    }
    if (!D.regionale_brute) {
      empty($("regionale-brute-body"));
      return;
    }
    const rows = (D.regionale_brute[state.annee] || []).map(([code, name, electricite, gaz, total]) => ({
      key: code,
      selected: code === state.region,
      values: { code_region: code, nom_region: name, electricite_mwh: electricite, gaz_mwh: gaz, total_mwh: total },
    }));
    dataTable($("regionale-brute-body"), "table-regionale-brute", [
      { key: "code_region", label: "Code", kind: "text" },
      { key: "nom_region", label: "Région", kind: "text" },
      { key: "electricite_mwh", label: "Électricité (MWh)", kind: "mwh" },
      { key: "gaz_mwh", label: "Gaz (MWh)", kind: "mwh" },
      { key: "total_mwh", label: "Total (MWh)", kind: "mwh" },
    ], rows, { sort: { key: "total_mwh", dir: "desc" }, onRow: selectRegion, emptyText: `Aucune donnée pour ${state.annee}` });
  }

  function areaRows(byCode, nameOf, codeKey, nameKey, selected) {
    return [...byCode].map(([code, values]) => ({
      key: code,
      selected: code === selected,
      values: { [codeKey]: code, [nameKey]: nameOf(code), ...values },
    }));
  }

  function areaTable(container, id, nested, rows, columns, onRow) {
    if (!nested) {
      empty(container);
      return;
    }
    dataTable(container, id, [...columns, ...MEASURES], rows, {
      footer: footerOf(rows, "Total", columns[1].key),
      sort: { key: "conso_totale_mwh", dir: "desc" },
      onRow,
      emptyText: noRows(),
    });
  }

  function renderKpis(scope, values) {
    const figures = values
      ? [
          ["conso_totale_mwh", "Consommation totale (MWh)", "mwh"],
          ["nb_sites", "Sites", "int"],
          ["conso_moyenne_mwh", "Moyenne par site (MWh)", "mean"],
          ["nb_lignes_masquees", "Lignes masquées", "int"],
        ]
      : [];
    $("kpis").replaceChildren(
      h("div", { class: "kpi", id: "kpi-scope" }, h("div", { class: "label" }, "Périmètre"),
        h("div", { class: "value" }, scope)),
      ...figures.map(([key, label, kind]) =>
        h("div", { class: "kpi", "data-kpi": key, "data-value": isNull(values[key]) ? "" : String(values[key]) },
          h("div", { class: "label" }, label), h("div", { class: "value" }, format(kind, values[key])))),
    );
  }

  function renderTerritoires() {
    const regions = totals(pick(D.region), state.secteur);
    const regionRows = areaRows(regions, regionName, "code_region", "nom_region", state.region);
    areaTable($("regions-body"), "table-regions", D.region, regionRows,
      [{ key: "code_region", label: "Code", kind: "text" }, { key: "nom_region", label: "Région", kind: "text" }],
      selectRegion);

    const departements = totals(pick(D.departement), state.secteur);
    for (const code of [...departements.keys()]) {
      const parent = D.departements[code] && D.departements[code][1];
      if (state.region && parent !== state.region) departements.delete(code);
    }
    const departementRows = areaRows(departements, departementName, "code_departement", "nom_departement", state.departement);
    areaTable($("departements-body"), "table-departements", D.departement, departementRows,
      [{ key: "code_departement", label: "Code", kind: "text" }, { key: "nom_departement", label: "Département", kind: "text" }],
      selectDepartement);

    if (state.departement) {
      renderKpis(`${departementName(state.departement)} (${state.departement})`, departements.get(state.departement) || null);
    } else if (state.region) {
      renderKpis(regionName(state.region), regions.get(state.region) || null);
    } else {
      renderKpis("France (somme des régions)", D.region ? footerOf(regionRows, "", "label") : null);
    }
  }

  function renderCommunes(doc, status) {
    const body = $("communes-body");
    if (status === "none") {
      empty(body, "Choisissez un département pour afficher ses communes.");
      return;
    }
    if (!doc) {
      empty(body, status === "missing" ? `Aucune donnée pour ${state.annee}` : "Données des communes introuvables");
      return;
    }
    const communes = totals(doc.rows[state.filiere] || [], state.secteur);
    const rows = areaRows(communes, (c) => doc.names[c] || c, "code_commune", "nom_commune", state.commune);
    dataTable(body, "table-communes", [
      { key: "code_commune", label: "Code", kind: "text" },
      { key: "nom_commune", label: "Commune", kind: "text" },
      ...MEASURES,
    ], rows, {
      footer: footerOf(rows, "Total", "nom_commune"),
      sort: { key: "conso_totale_mwh", dir: "desc" },
      onRow: selectCommune,
      emptyText: noRows(),
    });
    if (state.commune) {
      renderKpis(`${doc.names[state.commune] || state.commune} (${state.commune})`, communes.get(state.commune) || null);
    }
  }

  function addressTable(container, rows) {
    const columns = [
      { key: "adresse", label: "Adresse", kind: "text" },
      { key: "code_iris", label: "IRIS", kind: "text" },
      { key: "nombre_de_logements", label: "Logements", kind: "int" },
      { key: "conso_totale_mwh", label: "Consommation totale (MWh)", kind: "mwh" },
      { key: "conso_moyenne_mwh", label: "Moyenne par logement (MWh)", kind: "mean" },
    ];
    let dwellings = null;
    let total = null;
    for (const { values } of rows) {
      dwellings = add(dwellings, values.nombre_de_logements);
      total = add(total, values.conso_totale_mwh);
    }
    dataTable(container, "table-adresses", columns, rows, {
      footer: {
        adresse: `Total (${NUMBER.int.format(rows.length)} adresses)`,
        nombre_de_logements: dwellings,
        conso_totale_mwh: total,
        conso_moyenne_mwh: mean(total, dwellings),
      },
      sort: { key: "adresse", dir: "asc" },
      limit: ADDRESS_LIMIT,
      emptyText: "Aucune adresse ne correspond à la recherche.",
    });
  }

  function renderAdresses(doc) {
    const body = $("adresses-body");
    if (!state.commune) {
      empty(body, "Choisissez une commune (région → département → commune) pour afficher ses adresses.");
      return;
    }
    const count = doc && doc.adresses[state.commune];
    if (!count) {
      empty(body, `Aucune donnée pour cette commune en ${state.annee}`);
      return;
    }
    const annee = state.annee;
    const commune = state.commune;
    // a file of the département's communes (doc.parties says which): {commune: [adresses,
    // IRIS, logements, totaux]}
    const path = `adresses/${annee}/${state.departement}/${doc.parties[commune]}`;
    request(path, () => state.annee === annee && state.commune === commune, (file) => {
      const columns = file && file[commune];
      if (!columns) {
        empty(body, "Adresses introuvables");
        return;
      }
      const [addresses, irises, dwellings, totals] = columns;
      const rows = addresses.map((adresse, i) => ({
        key: String(i),
        values: {
          adresse, code_iris: irises[i], nombre_de_logements: dwellings[i], conso_totale_mwh: totals[i],
          conso_moyenne_mwh: mean(totals[i], dwellings[i]),
        },
      }));
      const title = h("p", { class: "note", id: "adresses-commune", "data-code": commune },
        `${doc.names[commune] || commune} (${commune}), ${annee}`);
      const search = h("input", { type: "search", id: "adresses-recherche", placeholder: "Rechercher une adresse…" });
      const tableBox = h("div");
      search.addEventListener("input", () => {
        const needle = search.value.trim().toLocaleLowerCase("fr");
        addressTable(tableBox, needle ? rows.filter((r) => String(r.values.adresse).toLocaleLowerCase("fr").includes(needle)) : rows);
      });
      body.replaceChildren(title, search, tableBox);
      addressTable(tableBox, rows);
    });
  }

  function renderSecteurs() {
    if (!D.secteur) {
      empty($("secteurs-body"));
      empty($("naf-body"));
      return;
    }
    const rows = pick(D.secteur);
    const sectors = totals(rows.map(([, sector, sites, total, masked]) => [sector, sector, sites, total, masked]), "");
    const ordered = [...sectors].sort((a, b) => compare(a[1].conso_totale_mwh, b[1].conso_totale_mwh, "mwh", "desc"));
    barChart($("secteurs-body"), "chart-secteurs", "Consommation par grand secteur",
      ordered.map(([code]) => ({ key: code, label: secteurLabel(code) })),
      [{ name: state.filiere, label: filiereLabel(state.filiere), color: COLORS[state.filiere] || "#555", values: ordered.map(([, v]) => v.conso_totale_mwh) }],
      state.secteur);
    const naf = rows
      .filter(([, sector]) => !state.secteur || sector === state.secteur)
      .map(([code, sector, sites, total, masked]) => ({
        key: `${sector}|${isNull(code) ? "" : code}`,
        values: { code_secteur_naf2: code, code_grand_secteur: sector, nb_sites: sites, conso_totale_mwh: total, conso_moyenne_mwh: mean(total, sites), nb_lignes_masquees: masked },
      }));
    dataTable($("naf-body"), "table-naf", [
      { key: "code_secteur_naf2", label: "Code NAF", kind: "text" },
      { key: "code_grand_secteur", label: "Grand secteur", kind: "text", render: secteurLabel },
      ...MEASURES,
    ], naf, { footer: footerOf(naf, "Total", "code_secteur_naf2"), sort: { key: "conso_totale_mwh", dir: "desc" }, emptyText: noRows() });
  }

  function renderDaily(container, id, region, label) {
    const years = D.lazy.journaliere[region];
    if (!years || !years.includes(Number(state.annee))) {
      empty(container, years ? `Aucune donnée pour ${state.annee}` : "Aucune donnée");
      return;
    }
    const annee = state.annee;
    request(`journaliere/${region}`, () => state.annee === annee && (region === "FR" || region === state.region), (doc) => {
      const days = (doc && doc[annee]) || [];
      lineChart(container, id, label, days.map((d) => d[0]), [
        { name: "electricite", label: "Électricité (MWh/jour)", color: COLORS.Electricité, values: days.map((d) => d[1]) },
        { name: "gaz", label: "Gaz (MWh/jour)", color: COLORS.Gaz, values: days.map((d) => d[2]) },
      ]);
    });
  }

  function renderJournaliere() {
    renderDaily($("journaliere-fr-body"), "chart-journaliere-fr", "FR", "Consommation journalière, France");
    const body = $("journaliere-region-body");
    $("journaliere-region-title").textContent = state.region ? `Région : ${regionName(state.region)}` : "Région";
    if (!state.region) {
      empty(body, "Choisissez une région pour afficher sa courbe journalière.");
      return;
    }
    renderDaily(body, "chart-journaliere-region", state.region, `Consommation journalière, ${regionName(state.region)}`);
  }

  function renderDataPanel() {
    const publication = D.publication;
    $("publication").textContent = publication
      ? `Tables publiées le ${stamp(publication.published_at)} (exécution ${publication.run_id}).`
      : "Aucune publication des tables.";
    $("generated").textContent = `Tableau de bord généré le ${stamp(D.generated_at)}.`;
    const titles = Object.fromEntries(D.datasets.map((d) => [d.name, d.title]));  // the catalog's
    dataTable($("datasets-body"), "table-datasets", [
      { key: "name", label: "Jeu de données", kind: "text", render: (n) => `${titles[n] || n} (${n})` },
      { key: "portal", label: "Portail", kind: "text" },
      { key: "source_updated", label: "Mise à jour de la source", kind: "stamp" },
      { key: "years", label: "Années chargées", kind: "list" },
      { key: "rows", label: "Lignes", kind: "int" },
      { key: "masked", label: "Lignes masquées", kind: "int" },
      { key: "quarantined", label: "Lignes en quarantaine", kind: "int" },
      { key: "committed_at", label: "Chargé le", kind: "stamp" },
    ], D.datasets.map((d) => ({ key: d.name, values: d })), { sort: { key: "name", dir: "asc" } });
    const checks = publication ? publication.checks : [];
    dataTable($("checks-body"), "table-checks", [
      { key: "name", label: "Contrôle", kind: "text" },
      { key: "status", label: "Statut", kind: "text", render: (s) => STATUSES[s] || s, className: (s) => `status-${s}` },
      { key: "summary", label: "Description", kind: "text" },
      { key: "problems", label: "Anomalies", kind: "int" },
    ], checks.map((c) => ({ key: c.name, values: c })), { sort: { key: "name", dir: "asc" } });
  }

  function render() {
    syncFilters();
    renderNationale();
    renderTerritoires();
    renderSecteurs();
    renderJournaliere();
    const annee = state.annee;
    const departement = state.departement;
    const done = (doc, status) => {
      if (status !== "none") fillCommunes(doc);
      renderCommunes(doc, status);
      renderAdresses(doc);
    };
    if (!departement) {
      done(null, "none");
    } else if (!((D.lazy.communes[annee] || []).includes(departement))) {
      done(null, "missing");
    } else {
      request(`communes/${annee}/${departement}`, () => state.annee === annee && state.departement === departement,
        (doc) => done(doc, doc ? "ok" : "error"));
    }
  }

  $("f-annee").addEventListener("change", (e) => { state.annee = e.target.value; render(); });
  $("f-filiere").addEventListener("change", (e) => { state.filiere = e.target.value; render(); });
  $("f-secteur").addEventListener("change", (e) => { state.secteur = e.target.value; render(); });
  $("f-region").addEventListener("change", (e) => selectRegion(e.target.value));
  $("f-departement").addEventListener("change", (e) => selectDepartement(e.target.value));
  $("f-commune").addEventListener("change", (e) => selectCommune(e.target.value));

  busy(0);
  renderDataPanel();
  render();
  document.documentElement.dataset.ready = "1";
})();
