/*
 * Sandbox page: builds CDS Hooks 2.0 requests in the browser and calls any CDS service the way
 * an EHR does (discovery, service call, feedback), then shows the cards as an EHR would.
 *
 * Security: card content comes from whatever service is called. Every text goes through
 * textContent; Markdown is rendered by markdown-it with raw HTML disabled and images off, and
 * only http(s) links are made clickable. The page's Content-Security-Policy forbids inline
 * scripts and off-site images besides.
 */
(function () {
  "use strict";

  const root = document.getElementById("sandbox-root");
  const API = root.dataset.api; // e.g. /sandbox/api/
  const DEMO_SIGNING = root.dataset.signing === "true";
  const UCUM = "http://unitsofmeasure.org";
  const SNOMED = "http://snomed.info/sct";
  const ROUTE_CODES = {
    intravenous: { code: "47625008", display: "Intravenous route", text: "IV" },
    subcutaneous: { code: "34206005", display: "Subcutaneous route", text: "SC" },
  };
  const INDICATOR_ORDER = { critical: 0, warning: 1, info: 2 };

  const state = {
    catalogue: null, // {drugs, doseUnits, rateUnits, routes}
    fixtures: [],
    fixture: null, // detail of the chosen fixture
    patient: null, // {id, resources: [...]}
    drafts: [], // [{resource, origin}]
    services: [],
    servicesFrom: null,
    counter: 0,
    lastCall: null,
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function uuid() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    const b = window.crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function today() {
    const d = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }

  function safeUrl(url) {
    if (typeof url !== "string") return null;
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  function setStatus(node, text, kind) {
    node.textContent = text;
    node.classList.remove("ok", "fail");
    if (kind) node.classList.add(kind);
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${url} answered ${response.status}`);
    return response.json();
  }

  function conceptText(concept) {
    if (!concept || typeof concept !== "object") return null;
    if (concept.text) return concept.text;
    for (const c of concept.coding || []) if (c && (c.display || c.code)) return c.display || c.code;
    return null;
  }

  function codeOf(concept) {
    if (!concept || typeof concept !== "object") return null;
    for (const c of concept.coding || []) if (c && c.code) return c.code;
    return typeof concept.text === "string" ? concept.text.toLowerCase() : null;
  }

  function quantityText(q) {
    if (!q || typeof q !== "object" || q.value === undefined) return null;
    return `${q.value} ${q.unit || q.code || ""}`.trim();
  }

  function refId(reference) {
    return typeof reference === "string" ? reference.split("/").pop() : null;
  }

  // ---------------------------------------------------------------- markdown

  const md = window.markdownit({ html: false, linkify: false, typographer: false, breaks: false });
  md.disable(["image"]);
  const renderLinkOpen =
    md.renderer.rules.link_open || ((tokens, idx, options, env, self) => self.renderToken(tokens, idx, options));
  md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
    tokens[idx].attrSet("target", "_blank");
    tokens[idx].attrSet("rel", "noopener noreferrer");
    return renderLinkOpen(tokens, idx, options, env, self);
  };

  function renderMarkdown(text) {
    const box = el("div", { class: "card-detail" });
    box.innerHTML = md.render(String(text)); // html:false → any HTML in the text is escaped
    for (const table of box.querySelectorAll("table")) {
      const wrap = el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Table" });
      table.replaceWith(wrap);
      wrap.append(table);
    }
    return box;
  }

  // ---------------------------------------------------------------- patient

  function resourcesOf(json) {
    if (!json || typeof json !== "object") return [];
    if (json.resourceType === "Bundle") {
      return (json.entry || []).map((e) => e && e.resource).filter((r) => r && r.resourceType);
    }
    return json.resourceType ? [json] : [];
  }

  function choosePatient(resources, fixture) {
    const patient = resources.find((r) => r.resourceType === "Patient");
    let id = patient && patient.id;
    if (!id) {
      const withSubject = resources.find((r) => (r.subject || r.patient || {}).reference);
      id = withSubject ? refId((withSubject.subject || withSubject.patient).reference) : null;
    }
    if (!id && fixture) id = fixture.patientId;
    if (!id) throw new Error("No Patient resource and no subject reference: the patient id is unknown");
    const changed = state.patient && state.patient.id !== id && state.drafts.length;
    state.patient = { id, resources };
    if (changed) {
      state.drafts = []; // draft orders belong to one patient
      renderDrafts();
      setStatus($("call-status"), "New patient: the draft order list was cleared.", "ok");
    }
    renderPatientSummary();
    refreshFireButton();
  }

  function resourceDate(r) {
    return (
      r.authoredOn ||
      r.effectiveDateTime ||
      r.recordedDate ||
      r.onsetDateTime ||
      (((r.dosageInstruction || [])[0] || {}).timing || { event: [] }).event?.[0] ||
      r.issued ||
      ""
    );
  }

  function medicationText(r, resources) {
    const text = conceptText(r.medicationCodeableConcept);
    if (text) return text;
    const ref = r.medicationReference || {};
    if (ref.display) return ref.display;
    if (typeof ref.reference === "string") {
      const id = ref.reference.startsWith("#") ? ref.reference.slice(1) : refId(ref.reference);
      const pool = ref.reference.startsWith("#") ? r.contained || [] : resources || [];
      const med = pool.find((m) => m.resourceType === "Medication" && m.id === id);
      if (med) return conceptText(med.code) || `Medication/${id}`;
      return ref.reference;
    }
    return "(no medication)";
  }

  function dosageSummary(r) {
    const parts = [];
    for (const d of r.dosageInstruction || []) {
      for (const dr of d.doseAndRate || []) {
        const dose = quantityText(dr.doseQuantity);
        const rate = quantityText(dr.rateQuantity);
        if (dose) parts.push(dose);
        if (rate) parts.push(`at ${rate}`);
        if (dr.rateRatio && dr.rateRatio.numerator) {
          parts.push(`at ${quantityText(dr.rateRatio.numerator)}/${quantityText(dr.rateRatio.denominator) || "h"}`);
        }
      }
    }
    const volume = r.dispenseRequest && quantityText(r.dispenseRequest.quantity);
    if (volume) parts.push(`in ${volume}`);
    return parts.join(" ");
  }

  function renderPatientSummary() {
    const box = $("patient-summary");
    box.replaceChildren();
    if (!state.patient) return;
    const { id, resources } = state.patient;
    const patient = resources.find((r) => r.resourceType === "Patient") || {};
    const name = (patient.name || [])[0] || {};
    const who = [name.family, (name.given || []).join(" ")].filter(Boolean).join(", ") || "(no name)";
    const weights = resources
      .filter((r) => r.resourceType === "Observation" && (r.code?.coding || []).some((c) => c.code === "29463-7"))
      .sort((a, b) => String(resourceDate(b)).localeCompare(String(resourceDate(a))));
    const weight = weights[0];
    box.append(
      el(
        "div",
        { class: "patient-card" },
        el("p", {}, el("strong", { text: who }), ` · ${patient.gender || "gender unknown"} · born ${patient.birthDate || "?"}`),
        el(
          "p",
          { class: "meta" },
          `Patient/${id}`,
          weight ? ` · weight ${quantityText(weight.valueQuantity)} (${String(resourceDate(weight)).slice(0, 10)})` : " · no weight"
        )
      )
    );

    const allergies = resources.filter((r) => r.resourceType === "AllergyIntolerance");
    box.append(el("h3", { text: `Allergies (${allergies.length})` }));
    if (!allergies.length) box.append(el("p", { class: "hint", text: "No allergy recorded." }));
    else {
      const list = el("ul", { class: "fact-list", "aria-label": "Allergies" });
      for (const a of allergies) {
        const verification = codeOf(a.verificationStatus);
        const clinical = codeOf(a.clinicalStatus);
        const reactions = (a.reaction || []).flatMap((x) => (x.manifestation || []).map(conceptText)).filter(Boolean);
        const severe = a.criticality === "high" || (a.reaction || []).some((x) => x.severity === "severe");
        list.append(
          el(
            "li",
            {},
            el("strong", { text: conceptText(a.code) || "(no substance)" }),
            severe ? el("span", { class: "tag severe", text: "severe / high criticality" }) : null,
            verification && verification !== "confirmed" ? el("span", { class: "tag muted", text: verification }) : null,
            clinical && clinical !== "active" ? el("span", { class: "tag muted", text: clinical }) : null,
            reactions.length ? el("div", { class: "meta", text: `Reaction: ${reactions.join(", ")}` }) : null,
            el("div", { class: "meta", text: String(a.recordedDate || a.onsetDateTime || "").slice(0, 10) })
          )
        );
      }
      box.append(list);
    }

    const meds = resources
      .filter((r) => r.resourceType === "MedicationRequest" || r.resourceType === "MedicationAdministration")
      .sort((a, b) => String(resourceDate(b)).localeCompare(String(resourceDate(a))));
    box.append(el("h3", { text: `Medication and infusion history (${meds.length})` }));
    if (!meds.length) box.append(el("p", { class: "hint", text: "No medication history." }));
    else {
      const list = el("ul", { class: "fact-list", "aria-label": "Medication and infusion history" });
      for (const m of meds) {
        const text = (m.dosageInstruction || [])[0]?.text;
        list.append(
          el(
            "li",
            {},
            el("strong", { text: medicationText(m, resources) }),
            el("span", { class: "tag muted", text: m.status || "?" }),
            el("div", { class: "meta", text: [String(resourceDate(m)).slice(0, 10), text || dosageSummary(m)].filter(Boolean).join(" · ") })
          )
        );
      }
      box.append(list);
    }
  }

  async function loadFixtures() {
    const select = $("patient-select");
    const data = await getJson(`${API}fixtures`);
    state.fixtures = data.fixtures;
    const groups = { patients: "Patients", scenarios: "Clinical scenarios (patient + draft orders)" };
    for (const [group, label] of Object.entries(groups)) {
      const items = state.fixtures.filter((f) => f.group === group);
      if (!items.length) continue;
      const optgroup = el("optgroup", { label });
      for (const f of items) optgroup.append(el("option", { value: f.key, text: f.label }));
      select.append(optgroup);
    }
  }

  async function onPatientSelected() {
    const key = $("patient-select").value;
    const desc = $("patient-description");
    const useOrders = $("use-scenario-orders");
    state.fixture = null;
    desc.hidden = true;
    useOrders.hidden = true;
    if (!key) return;
    try {
      const detail = await getJson(`${API}fixtures/${key}`);
      state.fixture = detail;
      choosePatient(resourcesOf(detail.bundle), detail);
      if (detail.description) {
        desc.textContent = detail.description;
        desc.hidden = false;
      }
      if (detail.draftOrders && detail.draftOrders.length) {
        useOrders.textContent = `Use this scenario's draft orders (${detail.draftOrders.length})`;
        useOrders.hidden = false;
      }
    } catch (e) {
      setStatus($("call-status"), `Could not load the patient: ${e.message}`, "fail");
    }
  }

  function usePastedPatient() {
    const status = $("call-status");
    try {
      const json = JSON.parse($("paste-patient").value);
      const resources = resourcesOf(json);
      if (!resources.length) throw new Error("no FHIR resource found");
      $("patient-select").value = "";
      state.fixture = null;
      $("patient-description").hidden = true;
      $("use-scenario-orders").hidden = true;
      choosePatient(resources, null);
      setStatus(status, `Using the pasted data (${resources.length} resources).`, "ok");
    } catch (e) {
      setStatus(status, `Pasted patient data not used: ${e.message}`, "fail");
    }
  }

  // ---------------------------------------------------------------- draft orders

  function fillCatalogue() {
    const cat = state.catalogue;
    const drug = $("drug");
    drug.append(el("option", { value: "", text: "Choose a drug…" }));
    for (const d of cat.drugs) {
      const brands = d.brands.length ? ` (${d.brands.join(", ")})` : "";
      drug.append(el("option", { value: d.id, text: `${d.display}${brands}` }));
    }
    for (const u of cat.doseUnits) $("dose-unit").append(el("option", { value: u, text: u }));
    for (const u of cat.rateUnits) $("rate-unit").append(el("option", { value: u, text: u }));
    for (const r of cat.routes) $("route").append(el("option", { value: r, text: r }));
    $("rate-unit").value = "mL/h";
  }

  function onDrugChanged() {
    const d = state.catalogue.drugs.find((x) => x.id === $("drug").value);
    const box = $("step-doses");
    const buttons = $("step-dose-buttons");
    buttons.replaceChildren();
    box.hidden = true;
    if (!d) return;
    if (d.route && ROUTE_CODES[d.route]) $("route").value = d.route;
    if (d.rateUnits.length) $("rate-unit").value = d.rateUnits.includes("mL/h") ? "mL/h" : d.rateUnits[0];
    if (d.steps.length) {
      for (const s of d.steps) {
        const label = `${s.dose.value} ${s.dose.unit}: ${s.label}${s.day ? `, ${s.day}` : ""}`;
        buttons.append(
          el("button", {
            type: "button",
            class: "secondary",
            text: label,
            onclick: () => {
              $("dose").value = s.dose.value;
              $("dose-unit").value = s.dose.unit;
              if (s.day) $("cycle-day").value = s.day;
            },
          })
        );
      }
      box.hidden = false;
    }
  }

  function quantity(value, unit) {
    return { value, unit, system: UCUM, code: unit };
  }

  function buildOrder() {
    const d = state.catalogue.drugs.find((x) => x.id === $("drug").value);
    if (!d) throw new Error("Choose a drug.");
    const num = (id) => {
      const raw = $(id).value.trim();
      if (!raw) return null;
      const value = Number(raw);
      if (!Number.isFinite(value) || value <= 0) throw new Error(`${$(id).labels[0].textContent} must be a positive number.`);
      return value;
    };
    const dose = num("dose");
    const volume = num("volume");
    const rate = num("rate");
    const doseUnit = $("dose-unit").value;
    const rateUnit = $("rate-unit").value;
    const route = $("route").value;
    const cycleDay = $("cycle-day").value.trim();
    const brand = d.brands.length ? ` (${d.brands[0]})` : "";
    const name = `${d.name}${brand}`;
    const textParts = [d.name];
    if (dose !== null) textParts.push(`${dose} ${doseUnit}`);
    if (volume !== null) textParts.push(`in ${volume} mL`);
    textParts.push(ROUTE_CODES[route] ? ROUTE_CODES[route].text : route);
    if (rate !== null) textParts.push(`at ${rate} ${rateUnit}`);
    if (cycleDay) textParts.push(`, ${cycleDay}`);
    const doseAndRate = {};
    if (dose !== null) doseAndRate.doseQuantity = quantity(dose, doseUnit);
    if (rate !== null) doseAndRate.rateQuantity = quantity(rate, rateUnit);
    const dosage = { text: textParts.join(" ").replace(" ,", ",") };
    if (ROUTE_CODES[route]) {
      const r = ROUTE_CODES[route];
      dosage.route = { coding: [{ system: SNOMED, code: r.code, display: r.display }], text: r.text };
    }
    if (Object.keys(doseAndRate).length) dosage.doseAndRate = [doseAndRate];
    state.counter += 1;
    const order = {
      resourceType: "MedicationRequest",
      id: `sandbox-${state.counter}-${d.id}`.slice(0, 64),
      status: "draft",
      intent: "order",
      medicationCodeableConcept: d.coding ? { coding: [d.coding], text: name } : { text: name },
      authoredOn: today(),
      dosageInstruction: [dosage],
    };
    if (state.patient) order.subject = { reference: `Patient/${state.patient.id}` };
    order.requester = { reference: $("user-id").value.trim() || "Practitioner/sandbox-prescriber" };
    if (volume !== null) order.dispenseRequest = { quantity: quantity(volume, "mL") };
    return order;
  }

  function addDraft(resource, origin) {
    const copy = JSON.parse(JSON.stringify(resource));
    if (!copy.id) {
      state.counter += 1;
      copy.id = `sandbox-${state.counter}`;
    }
    state.drafts.push({ resource: copy, origin, selected: true });
  }

  function describeDraft(r) {
    if (r.resourceType === "MedicationRequest") {
      return { title: medicationText(r, state.patient ? state.patient.resources : []), detail: (r.dosageInstruction || [])[0]?.text || dosageSummary(r) };
    }
    const title = conceptText(r.code) || conceptText(r.medicationCodeableConcept) || r.resourceType;
    const detail = [r.intent, conceptText((r.category || [])[0]), (r.note || [])[0]?.text].filter(Boolean).join(" · ");
    return { title, detail };
  }

  function renderDrafts() {
    const list = $("draft-list");
    list.replaceChildren();
    $("draft-count").textContent = `(${state.drafts.length})`;
    state.drafts.forEach((draft, index) => {
      const r = draft.resource;
      const { title, detail } = describeDraft(r);
      const checkId = `draft-sel-${index}`;
      const origin = draft.origin === "card" ? el("span", { class: "tag new", text: "added from a card" }) : draft.origin === "card-update" ? el("span", { class: "tag new", text: "updated from a card" }) : null;
      list.append(
        el(
          "li",
          { class: draft.origin && draft.origin.startsWith("card") ? "from-card" : null, "data-id": `${r.resourceType}/${r.id}` },
          el("input", {
            type: "checkbox",
            id: checkId,
            checked: draft.selected,
            "aria-label": `Selected for order-select: ${title}`,
            onchange: (e) => {
              draft.selected = e.target.checked;
            },
          }),
          el(
            "div",
            { class: "draft-text" },
            el("label", { for: checkId, class: "draft-title", text: title }),
            origin,
            el("div", { class: "meta", text: [detail, `${r.resourceType}/${r.id}`, r.status].filter(Boolean).join(" · ") })
          ),
          el("button", {
            type: "button",
            class: "secondary",
            text: "Remove",
            "aria-label": `Remove ${title}`,
            onclick: () => {
              state.drafts.splice(index, 1);
              renderDrafts();
              $("draft-list-h").focus?.();
            },
          }),
          el("details", {}, el("summary", { text: "FHIR JSON" }), el("pre", { class: "json", text: pretty(r) }))
        )
      );
    });
  }

  function onAddOrder(event) {
    event.preventDefault();
    const error = $("order-form-error");
    try {
      addDraft(buildOrder(), "builder");
      error.hidden = true;
      renderDrafts();
      setStatus($("call-status"), "Draft order added.", "ok");
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  }

  function addPastedOrders() {
    const status = $("call-status");
    try {
      const json = JSON.parse($("paste-order").value);
      const orders = resourcesOf(json).filter((r) => r.resourceType !== "Bundle");
      if (!orders.length) throw new Error("no FHIR resource found");
      for (const o of orders) addDraft(o, "pasted");
      renderDrafts();
      setStatus(status, `${orders.length} pasted order(s) added.`, "ok");
    } catch (e) {
      setStatus(status, `Pasted order not added: ${e.message}`, "fail");
    }
  }

  function useScenarioOrders() {
    if (!state.fixture || !state.fixture.draftOrders) return;
    state.drafts = [];
    for (const o of state.fixture.draftOrders) addDraft(o, "scenario");
    renderDrafts();
    if (state.fixture.hook) {
      const radio = document.querySelector(`input[name="hook"][value="${state.fixture.hook}"]`);
      if (radio) {
        radio.checked = true;
        onHookChanged();
      }
    }
    setStatus($("call-status"), `${state.fixture.draftOrders.length} draft order(s) loaded from the scenario.`, "ok");
  }

  // ---------------------------------------------------------------- suggestions → drafts

  function findDraft(type, id) {
    return state.drafts.findIndex((d) => d.resource.resourceType === type && d.resource.id === id);
  }

  function applyActions(actions) {
    const notes = [];
    const ordered = [...(actions || [])].sort(
      (a, b) => ["delete", "create", "update"].indexOf(a.type) - ["delete", "create", "update"].indexOf(b.type)
    );
    for (const action of ordered) {
      if (action.type === "delete") {
        let refs = action.resourceId || (typeof action.resource === "string" ? action.resource : null);
        refs = Array.isArray(refs) ? refs : refs ? [refs] : [];
        for (const ref of refs) {
          const [type, id] = String(ref).split("/").slice(-2);
          const index = findDraft(type, id);
          if (index >= 0) state.drafts.splice(index, 1);
          else notes.push(`${ref} is not in the draft list`);
        }
      } else if (action.type === "create" && action.resource && typeof action.resource === "object") {
        addDraft(action.resource, "card");
      } else if (action.type === "update" && action.resource && typeof action.resource === "object") {
        const index = findDraft(action.resource.resourceType, action.resource.id);
        if (index >= 0) {
          state.drafts[index] = { resource: JSON.parse(JSON.stringify(action.resource)), origin: "card-update", selected: state.drafts[index].selected };
        } else {
          addDraft(action.resource, "card-update");
          notes.push(`${action.resource.resourceType}/${action.resource.id} was not in the list; added`);
        }
      } else {
        notes.push(`action "${action.type}" without a usable resource ignored`);
      }
    }
    renderDrafts();
    return notes;
  }

  // ---------------------------------------------------------------- prefetch

  function fillTokens(template, context) {
    return template.replace(/\{\{\s*([^}]+?)\s*\}\}/g, (all, token) => {
      if (token.startsWith("context.")) {
        const value = context[token.slice(8)];
        if (typeof value === "string") return value;
        throw new Error(`token ${token} has no value`);
      }
      if (token === "userPractitionerId" && /^Practitioner\//.test(context.userId)) return refId(context.userId);
      if (token === "userPractitionerRoleId" && /^PractitionerRole\//.test(context.userId)) return refId(context.userId);
      if (token === "userPatientId" && /^Patient\//.test(context.userId)) return refId(context.userId);
      throw new Error(`token ${token} not supported`);
    });
  }

  function belongsTo(resource, patientId) {
    const ref = (resource.subject || resource.patient || {}).reference;
    if (resource.resourceType === "Patient") return resource.id === patientId;
    return !ref || refId(ref) === patientId;
  }

  function matchesToken(concept, wanted) {
    const [system, code] = wanted.includes("|") ? wanted.split("|") : [null, wanted];
    return ((concept || {}).coding || []).some((c) => c.code === code && (!system || c.system === system));
  }

  function searchset(type, params, resources, patientId) {
    let matches = resources.filter((r) => r.resourceType === type && belongsTo(r, patientId));
    for (const [name, value] of params) {
      if (name === "patient" || name === "subject" || name.startsWith("_")) continue;
      if (name === "code") matches = matches.filter((r) => value.split(",").some((v) => matchesToken(r.code, v)));
      else if (name === "status") matches = matches.filter((r) => value.split(",").includes(r.status));
      else if (name === "clinical-status") matches = matches.filter((r) => value.split(",").includes(codeOf(r.clinicalStatus)));
    }
    const sort = params.get("_sort");
    if (sort && sort.replace("-", "") === "date") {
      matches.sort((a, b) => String(resourceDate(a)).localeCompare(String(resourceDate(b))));
      if (sort.startsWith("-")) matches.reverse();
    }
    const count = Number(params.get("_count"));
    if (Number.isInteger(count) && count > 0) matches = matches.slice(0, count);
    const entry = matches.map((r) => ({ fullUrl: `${type}/${r.id}`, resource: r, search: { mode: "match" } }));
    if (params.getAll("_include").some((v) => v.endsWith(":medication"))) {
      const seen = new Set();
      for (const r of matches) {
        const ref = (r.medicationReference || {}).reference;
        if (!ref || ref.startsWith("#")) continue;
        const med = resources.find((m) => m.resourceType === "Medication" && m.id === refId(ref));
        if (med && !seen.has(med.id)) {
          seen.add(med.id);
          entry.push({ fullUrl: `Medication/${med.id}`, resource: med, search: { mode: "include" } });
        }
      }
    }
    const bundle = { resourceType: "Bundle", type: "searchset", total: matches.length };
    if (entry.length) bundle.entry = entry;
    return bundle;
  }

  function buildPrefetch(templates, context) {
    const prefetch = {};
    const skipped = [];
    const resources = state.patient ? state.patient.resources : [];
    for (const [key, template] of Object.entries(templates || {})) {
      let query;
      try {
        query = fillTokens(template, context);
      } catch (e) {
        skipped.push(`${key} (${e.message})`);
        continue;
      }
      const read = /^([A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/.exec(query);
      const search = /^([A-Za-z]+)\?(.*)$/.exec(query);
      if (read) {
        const found = resources.find((r) => r.resourceType === read[1] && r.id === read[2]);
        prefetch[key] = found || null;
      } else if (search) {
        prefetch[key] = searchset(search[1], new URLSearchParams(search[2]), resources, context.patientId);
      } else {
        skipped.push(`${key} (template not understood)`);
      }
    }
    return { prefetch, skipped };
  }

  // ---------------------------------------------------------------- services

  function discoveryUrl() {
    return $("service-url").value.trim().replace(/\/+$/, "");
  }

  function hook() {
    return document.querySelector('input[name="hook"]:checked').value;
  }

  async function authHeader(url) {
    const mode = document.querySelector('input[name="auth"]:checked').value;
    if (mode === "paste") {
      const token = $("auth-token").value.trim();
      if (!token) throw new Error("Paste a bearer token or choose another Authorization option.");
      return token;
    }
    if (mode === "demo-key") {
      const response = await fetch(`${API}token`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ aud: url }),
      });
      if (!response.ok) throw new Error(`the demo test key could not sign (${response.status})`);
      return (await response.json()).token;
    }
    return null;
  }

  async function loadServices() {
    const url = discoveryUrl();
    const status = $("call-status");
    try {
      const token = await authHeader(url);
      const headers = { Accept: "application/json" };
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await fetch(url, { headers });
      if (!response.ok) throw new Error(`discovery answered ${response.status}`);
      const body = await response.json();
      state.services = Array.isArray(body.services) ? body.services : [];
      state.servicesFrom = url;
      onHookChanged();
      setStatus(status, `${state.services.length} service(s) found at ${url}.`, "ok");
    } catch (e) {
      state.services = [];
      state.servicesFrom = null;
      onHookChanged();
      setStatus(status, `Discovery failed: ${e.message}. Check the URL and that the service allows this page's origin (CORS).`, "fail");
    }
  }

  function onHookChanged() {
    const select = $("service-id");
    const h = hook();
    select.replaceChildren();
    for (const s of state.services.filter((x) => x.hook === h)) {
      select.append(el("option", { value: s.id, text: `${s.title || s.id} (${s.id})` }));
    }
    if (!select.options.length) select.append(el("option", { value: "", text: `No service for ${h}` }));
    $("fire").textContent = `Send ${h}`;
    refreshFireButton();
  }

  function refreshFireButton() {
    $("fire").disabled = !$("service-id").value;
  }

  // ---------------------------------------------------------------- call

  function buildRequest(service) {
    const h = service.hook;
    const context = {
      userId: $("user-id").value.trim() || "Practitioner/sandbox-prescriber",
      patientId: state.patient.id,
    };
    const encounter = $("encounter-id").value.trim();
    if (encounter) context.encounterId = encounter;
    if (h !== "patient-view") {
      const entries = state.drafts.map((d) => ({ resource: d.resource }));
      context.draftOrders = { resourceType: "Bundle", type: "collection", entry: entries };
      if (!entries.length) delete context.draftOrders.entry;
    }
    if (h === "order-select") {
      context.selections = state.drafts.filter((d) => d.selected).map((d) => `${d.resource.resourceType}/${d.resource.id}`);
    }
    const body = { hookInstance: uuid(), hook: h };
    const fhirServer = $("fhir-server").value.trim();
    if (fhirServer) body.fhirServer = fhirServer;
    body.context = context;
    let skipped = [];
    if ($("send-prefetch").checked && service.prefetch) {
      const built = buildPrefetch(service.prefetch, context);
      body.prefetch = built.prefetch;
      skipped = built.skipped;
    }
    return { body, skipped };
  }

  function shellQuote(text) {
    return `'${String(text).replace(/'/g, `'"'"'`)}'`;
  }

  function curlCommand(url, body, token) {
    const lines = [`curl -sS -X POST ${shellQuote(url)} \\`, `  -H 'Content-Type: application/json' \\`];
    if (token) lines.push(`  -H ${shellQuote(`Authorization: Bearer ${token}`)} \\`);
    lines.push("  --data-binary @- <<'CDS_HOOKS_REQUEST'", JSON.stringify(body, null, 2), "CDS_HOOKS_REQUEST");
    return lines.join("\n");
  }

  async function fire() {
    const status = $("call-status");
    const service = state.services.find((s) => s.id === $("service-id").value && s.hook === hook());
    if (!state.patient) {
      setStatus(status, "Choose or paste a patient first.", "fail");
      $("patient-select").focus();
      return;
    }
    if (!service) {
      setStatus(status, "No service for this hook: load the services first.", "fail");
      return;
    }
    if (service.hook !== "patient-view" && !state.drafts.length) {
      setStatus(status, "The draft order list is empty: add an order first.", "fail");
      $("drug").focus();
      return;
    }
    const url = `${state.servicesFrom}/${encodeURIComponent(service.id)}`;
    const { body, skipped } = buildRequest(service);
    $("fire").disabled = true;
    setStatus(status, `Calling ${service.id} (${service.hook})…`);
    $("request-url").textContent = `POST ${url}`;
    $("request-json").textContent = pretty(body);
    $("response-json").textContent = "(waiting)";
    $("response-status").textContent = "";
    let token = null;
    try {
      token = await authHeader(url);
      const headers = { "Content-Type": "application/json", Accept: "application/json" };
      if (token) headers.Authorization = `Bearer ${token}`;
      const started = performance.now();
      const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
      const ms = Math.round(performance.now() - started);
      const text = await response.text();
      let json = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch (e) {
        json = null;
      }
      $("response-status").textContent = `HTTP ${response.status} · ${ms} ms`;
      $("response-json").textContent = json ? pretty(json) : text || "(empty body)";
      state.lastCall = { url, service, body };
      if (response.ok && json && Array.isArray(json.cards)) {
        renderCards(json.cards, service);
        const note = skipped.length ? ` Prefetch keys not sent: ${skipped.join(", ")}.` : "";
        setStatus(status, `${service.hook}: ${json.cards.length} card(s) in ${ms} ms.${note}`, "ok");
        $("cards").focus();
      } else {
        renderCards([], service);
        const issue = json && json.issue && json.issue[0] ? json.issue[0].diagnostics : null;
        setStatus(status, `HTTP ${response.status}${issue ? `: ${issue}` : ""}`, "fail");
      }
    } catch (e) {
      $("response-json").textContent = "(no response)";
      setStatus(status, `Call failed: ${e.message}. If the service is on another origin it must allow CORS.`, "fail");
    } finally {
      refreshFireButton();
    }
    let curlToken = null;
    const mode = document.querySelector('input[name="auth"]:checked').value;
    if (mode === "paste") curlToken = token;
    else if (mode === "demo-key") {
      try {
        curlToken = await authHeader(url); // a fresh token: the first one's jti is already used
      } catch (e) {
        curlToken = "TOKEN";
      }
    }
    $("curl").textContent = curlCommand(url, body, curlToken);
    $("copy-curl").disabled = false;
  }

  // ---------------------------------------------------------------- cards

  function cardOutcome(card, text, kind) {
    const out = card.querySelector(".card-outcome");
    setStatus(out, text, kind);
  }

  async function sendFeedback(service, item) {
    const url = `${state.servicesFrom}/${encodeURIComponent(service.id)}/feedback`;
    const body = { feedback: [item] };
    const entry = el("li", {}, el("span", { text: `POST ${url} — ${item.outcome} — ` }), el("span", { text: "sending…" }));
    $("feedback-log").append(entry);
    try {
      const token = await authHeader(url);
      const headers = { "Content-Type": "application/json" };
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
      entry.lastChild.textContent = `HTTP ${response.status}`;
      entry.append(el("details", {}, el("summary", { text: "body" }), el("pre", { class: "json", text: pretty(body) })));
      return response.status;
    } catch (e) {
      entry.lastChild.textContent = `failed: ${e.message}`;
      return null;
    }
  }

  function renderCards(cards, service) {
    const list = $("card-list");
    list.replaceChildren();
    $("cards-empty").hidden = cards.length > 0;
    if (!cards.length) {
      $("cards-empty").textContent = "No card: nothing to show for this request.";
      $("cards-empty").hidden = false;
    }
    const sorted = cards
      .map((c, i) => [c, i])
      .sort((a, b) => (INDICATOR_ORDER[a[0].indicator] ?? 3) - (INDICATOR_ORDER[b[0].indicator] ?? 3) || a[1] - b[1])
      .map((x) => x[0]);
    sorted.forEach((c, index) => list.append(renderCard(c, index, service)));
    for (const wrap of list.querySelectorAll(".table-wrap")) {
      if (wrap.scrollWidth > wrap.clientWidth + 1) {
        wrap.after(el("p", { class: "hint table-hint", text: "The table is wider than the panel: scroll it sideways." }));
      }
    }
  }

  function renderCard(c, index, service) {
    const indicator = ["critical", "warning", "info"].includes(c.indicator) ? c.indicator : "info";
    const summaryId = `card-summary-${index}`;
    const card = el("article", { class: `cds-card ${indicator}`, "aria-labelledby": summaryId, "data-indicator": indicator });
    card.append(
      el(
        "div",
        { class: "card-head" },
        el("span", { class: `indicator ${indicator}`, text: indicator }),
        el("h3", { class: "card-summary", id: summaryId, text: c.summary || "(no summary)" })
      )
    );
    if (c.detail) card.append(renderMarkdown(c.detail));

    if (c.source) {
      const src = el("div", { class: "card-source" }, "Source: ");
      const href = safeUrl(c.source.url);
      src.append(href ? el("a", { href, target: "_blank", rel: "noopener noreferrer", text: c.source.label || href }) : el("span", { text: c.source.label || "" }));
      if (c.source.topic) src.append(el("span", { text: ` · Topic: ${c.source.topic.display || c.source.topic.code || ""}` }));
      card.append(src);
    }

    if (Array.isArray(c.links) && c.links.length) {
      const links = el("ul", { class: "card-links", "aria-label": "Links" });
      for (const link of c.links) {
        const href = safeUrl(link.url);
        if (link.type === "smart") {
          links.append(el("li", {}, el("span", { text: `${link.label} (SMART app: not launched from the sandbox)` })));
        } else if (href) {
          links.append(el("li", {}, el("a", { href, target: "_blank", rel: "noopener noreferrer", text: link.label || href })));
        } else {
          links.append(el("li", {}, el("span", { text: `${link.label} (link not http/https: not shown)` })));
        }
      }
      card.append(links);
    }

    const actions = el("div", { class: "card-actions" });
    const suggestionButtons = [];
    if (Array.isArray(c.suggestions) && c.suggestions.length) {
      const group = el("div", { class: "suggestions", role: "group", "aria-label": `Suggestions (${c.selectionBehavior || "any"})` });
      for (const s of c.suggestions) {
        const box = el("div", { class: "suggestion" });
        const button = el(
          "button",
          { type: "button", class: "secondary" },
          el("span", { text: `Accept: ${s.label}` }),
          s.isRecommended ? el("span", { class: "rec", text: "recommended" }) : null
        );
        button.addEventListener("click", async () => {
          const notes = applyActions(s.actions);
          box.classList.add("accepted");
          button.disabled = true;
          button.firstChild.textContent = `Accepted: ${s.label}`;
          if (c.selectionBehavior === "at-most-one") suggestionButtons.forEach((b) => (b.disabled = true));
          const changes = (s.actions || []).map((a) => a.type).join(", ") || "no action";
          let text = `Accepted “${s.label}” (${changes}) — draft orders updated.`;
          if (notes.length) text += ` ${notes.join("; ")}.`;
          if (c.uuid && s.uuid) {
            const code = await sendFeedback(service, {
              card: c.uuid,
              outcome: "accepted",
              acceptedSuggestions: [{ id: s.uuid }],
              outcomeTimestamp: new Date().toISOString(),
            });
            text += code ? ` Feedback sent: HTTP ${code}.` : " Feedback failed.";
            cardOutcome(card, text, code && code < 300 ? "ok" : "fail");
          } else {
            cardOutcome(card, `${text} No feedback: the card or suggestion has no uuid.`, "ok");
          }
        });
        suggestionButtons.push(button);
        box.append(button);
        const described = (s.actions || []).map((a) => {
          const what = a.resource && a.resource.resourceType ? a.resource.resourceType : "resource";
          const verb = { create: `adds a draft ${what}`, update: `replaces ${what}/${(a.resource || {}).id || "?"}`, delete: "removes a draft order" }[a.type] || a.type;
          return a.description && a.description !== s.label ? `${verb}: ${a.description}` : verb;
        });
        if (described.length) box.append(el("div", { class: "actions", text: `Accepting ${described.join("; ")}` }));
        group.append(box);
      }
      actions.append(group);
    }

    const reasonId = `override-reason-${index}`;
    const commentId = `override-comment-${index}`;
    const reasons = Array.isArray(c.overrideReasons) ? c.overrideReasons : [];
    const select = el("select", { id: reasonId }, el("option", { value: "", text: reasons.length ? "Choose a reason…" : "(no coded reason offered)" }));
    reasons.forEach((r, i) => select.append(el("option", { value: String(i), text: r.display || r.code })));
    const comment = el("input", { type: "text", id: commentId, placeholder: "optional comment" });
    const overrideButton = el("button", { type: "button", class: "secondary", text: "Override" });
    overrideButton.addEventListener("click", async () => {
      const reason = select.value === "" ? null : reasons[Number(select.value)];
      const item = { card: c.uuid, outcome: "overridden", outcomeTimestamp: new Date().toISOString() };
      const overrideReason = {};
      if (reason) overrideReason.reason = { code: reason.code, system: reason.system, display: reason.display };
      if (comment.value.trim()) overrideReason.userComment = comment.value.trim();
      if (Object.keys(overrideReason).length) item.overrideReason = overrideReason;
      overrideButton.disabled = true;
      suggestionButtons.forEach((b) => (b.disabled = true));
      const label = reason ? `Overridden: ${reason.display || reason.code}.` : "Overridden without a reason.";
      if (!c.uuid) {
        cardOutcome(card, `${label} No feedback: the card has no uuid.`, "ok");
        return;
      }
      const code = await sendFeedback(service, item);
      cardOutcome(card, `${label} ${code ? `Feedback sent: HTTP ${code}.` : "Feedback failed."}`, code && code < 300 ? "ok" : "fail");
      card.classList.add("done");
    });
    actions.append(
      el(
        "div",
        { class: "override" },
        el("label", { for: reasonId, text: "Override reason" }),
        select,
        el("label", { for: commentId, class: "visually-hidden", text: "Override comment" }),
        el("div", { class: "inline" }, comment, overrideButton)
      )
    );
    actions.append(el("p", { class: "card-outcome", role: "status" }));
    card.append(actions);
    return card;
  }

  // ---------------------------------------------------------------- misc UI

  async function copyCurl() {
    const text = $("curl").textContent;
    const status = $("copy-status");
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = "Copied.";
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents($("curl"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      status.textContent = document.execCommand && document.execCommand("copy") ? "Copied." : "Selected: press Ctrl+C to copy.";
    }
  }

  function onAuthChanged() {
    const mode = document.querySelector('input[name="auth"]:checked').value;
    $("auth-paste").hidden = mode !== "paste";
  }

  function setupAuth() {
    const demoRadio = $("auth-demo-key");
    const note = $("auth-demo-note");
    if (DEMO_SIGNING) {
      note.textContent = `Tokens are signed by a key the demo generated at start-up (issuer ${root.dataset.demoIss}); only its public key is published, at ${root.dataset.jwks}, and only this demo trusts it.`;
    } else {
      demoRadio.disabled = true;
      note.textContent = "The demo's test key exists only in demo mode (cds-server demo).";
    }
  }

  async function init() {
    $("service-url").value = new URL(root.dataset.discovery, window.location.href).href;
    $("encounter-id").value = `enc-sandbox-${uuid().slice(0, 8)}`;
    setupAuth();
    $("order-form").addEventListener("submit", onAddOrder);
    $("drug").addEventListener("change", onDrugChanged);
    $("patient-select").addEventListener("change", onPatientSelected);
    $("use-pasted-patient").addEventListener("click", usePastedPatient);
    $("use-scenario-orders").addEventListener("click", useScenarioOrders);
    $("add-pasted-order").addEventListener("click", addPastedOrders);
    $("load-services").addEventListener("click", loadServices);
    $("service-url").addEventListener("change", loadServices);
    $("service-id").addEventListener("change", refreshFireButton);
    $("fire").addEventListener("click", fire);
    $("copy-curl").addEventListener("click", copyCurl);
    $("new-encounter").addEventListener("click", () => {
      $("encounter-id").value = `enc-sandbox-${uuid().slice(0, 8)}`;
    });
    for (const radio of document.querySelectorAll('input[name="hook"]')) radio.addEventListener("change", onHookChanged);
    for (const radio of document.querySelectorAll('input[name="auth"]')) radio.addEventListener("change", onAuthChanged);
    onHookChanged();
    try {
      state.catalogue = await getJson(`${API}drugs`);
      fillCatalogue();
      await loadFixtures();
    } catch (e) {
      setStatus($("call-status"), `Could not load the sandbox data: ${e.message}`, "fail");
    }
    await loadServices();
    root.dataset.ready = "true";
  }

  init();
})();
