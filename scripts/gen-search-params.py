#!/usr/bin/env python3
"""Derive schemas/fhir-r4-search-params.json from the official FHIR R4 (4.0.1) search parameters.

Source: `Bundle-searchParams.json` in the npm package hl7.fhir.r4.examples@4.0.1 (CC0), HL7's
own SearchParameter definitions. The output is a compact table the search engine compiles at
start-up: for every resource type (or `Resource` for the parameters all types share) and
parameter code, the parameter's type, the reference targets, and the FHIRPath expression reduced
to element paths in JSON property names:

    {"path": ["name", "family"]}                      Patient.name.family
    {"path": ["valueQuantity"]}                       (Observation.value as Quantity)
    {"path": ["subject"], "resolves": "Patient"}      Observation.subject.where(resolve() is Patient)
    {"path": ["telecom"], "where": ["system", "email"]}   Patient.telecom.where(system='email')
    {"path": ["relatedArtifact"], "where": ["type", "composed-of"], "then": ["resource"]}
                                                      Library.relatedArtifact.where(type='composed-of').resource

A path step may name a choice element without its type (`Observation.effective`): it stands for
every typed variant (`effectiveDateTime`, `effectivePeriod`, ...), which the server expands from
the structural model.

Parameters of type composite and special, and expression alternatives that are not such paths,
are listed under "unsupported" with their expression, so that the CapabilityStatement can leave
them out and a later change can add them.

The compartments (`CompartmentDefinition-{device,encounter,patient,practitioner,relatedPerson}.json`
in the same package) are kept beside: for each compartment type, the resource types that can be
in it and the reference parameters that make them members (`{def}`, the focal resource itself,
is left out: the server adds it where the operation needs it).

Usage: scripts/gen-search-params.py [PACKAGE_DIR]
Without PACKAGE_DIR the package is fetched with `npm pack` into a temporary folder. The output
is deterministic, and a test (`fhir::search_params` unit tests) checks that the committed file
parses and that every path exists in the structural model (schemas/fhir-r4-model.json).
"""

import json
import os
import re

from fhir_package import package_dir

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "schemas", "fhir-r4-search-params.json")
SUPPORTED = ("number", "date", "string", "token", "reference", "quantity", "uri")

STEP = r"[a-z][A-Za-z]*"
STEPS = rf"{STEP}(?:\.{STEP})*"
TYPE = r"[A-Za-z]+"
FORMS = [
    # Base.a.b
    (re.compile(rf"^(?P<base>[A-Z][A-Za-z]*)\.(?P<steps>{STEPS})$"), None),
    # (Base.a.b as Type), (Base.a.b as Type).c  and  Base.a.b.as(Type)
    (re.compile(rf"^\((?P<base>[A-Z][A-Za-z]*)\.(?P<steps>{STEPS}) as (?P<as>{TYPE})\)(?:\.(?P<then>{STEPS}))?$"), "as"),
    (re.compile(rf"^(?P<base>[A-Z][A-Za-z]*)\.(?P<steps>{STEPS})\.as\((?P<as>{TYPE})\)$"), "as"),
    # Base.a.where(resolve() is Type)
    (re.compile(rf"^(?P<base>[A-Z][A-Za-z]*)\.(?P<steps>{STEPS})\.where\(resolve\(\) is (?P<is>{TYPE})\)$"), "is"),
    # Base.a.where(b = 'value')  and  Base.a.where(b = 'value').c
    (re.compile(rf"^(?P<base>[A-Z][A-Za-z]*)\.(?P<steps>{STEPS})\.where\((?P<el>{STEP}) ?= ?'(?P<val>[^']*)'\)"
                rf"(?:\.(?P<then>{STEPS}))?$"),
     "where"),
]


def compile_alternative(alt):
    """(base, path entry) for one `|` alternative, or None when it is not a plain path."""
    for pattern, form in FORMS:
        m = pattern.match(alt)
        if not m:
            continue
        steps = m.group("steps").split(".")
        entry = {}
        if form == "as":
            # A choice element: `value` as `Quantity` is the JSON property `valueQuantity`.
            t = m.group("as")
            steps[-1] = steps[-1] + t[0].upper() + t[1:]
        elif form == "is":
            entry["resolves"] = m.group("is")
        elif form == "where":
            entry["where"] = [m.group("el"), m.group("val")]
        then = m.groupdict().get("then")
        if then:
            entry["then"] = then.split(".")
        entry = {"path": steps, **entry}
        return m.group("base"), entry
    return None


def split_alternatives(expression):
    """Split on the top-level `|` (not inside parentheses or quotes)."""
    parts, depth, quoted, current = [], 0, False, ""
    for ch in expression:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "|" and depth == 0 and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def params_kind(params, base, code):
    """The type of a parameter of `base` (its own, or one every resource has), or None."""
    param = params.get((base, code)) or params.get(("Resource", code))
    return param["type"] if param else None


def main():
    pkg = package_dir()
    with open(os.path.join(pkg, "Bundle-searchParams.json"), encoding="utf-8") as f:
        bundle = json.load(f)
    params, unsupported = {}, []
    for entry in bundle["entry"]:
        sp = entry["resource"]
        code, kind, expression = sp["code"], sp["type"], sp.get("expression")
        for base in sp["base"]:
            if kind not in SUPPORTED or not expression:
                unsupported.append({"base": base, "code": code, "type": kind, "expression": expression or ""})
                continue
            paths = []
            for alt in split_alternatives(expression):
                compiled = compile_alternative(alt)
                if compiled is None:
                    if alt.startswith(base + ".") or alt.startswith("(" + base + "."):
                        unsupported.append({"base": base, "code": code, "type": kind, "expression": alt})
                    continue
                alt_base, path = compiled
                if alt_base == base:
                    paths.append(path)
            if not paths:
                continue
            param = {"base": base, "code": code, "type": kind, "paths": paths}
            if kind == "reference":
                param["targets"] = sorted(sp.get("target", []))
            params[(base, code)] = param
    compartments = {}
    for name in ("device", "encounter", "patient", "practitioner", "relatedPerson"):
        with open(os.path.join(pkg, f"CompartmentDefinition-{name}.json"), encoding="utf-8") as f:
            definition = json.load(f)
        members = {}
        for resource in definition["resource"]:
            through = [p for p in resource.get("param", []) if p != "{def}"]
            for p in through:
                kind = params_kind(params, resource["code"], p)
                if kind != "reference":
                    raise SystemExit(f"compartment {definition['code']}: {resource['code']}.{p} is {kind}")
            if through:
                members[resource["code"]] = through
        compartments[definition["code"]] = dict(sorted(members.items()))
    out = {
        "source": "hl7.fhir.r4.examples@4.0.1 (CC0): Bundle-searchParams.json, CompartmentDefinition-*.json",
        "generator": "scripts/gen-search-params.py",
        "fhirVersion": "4.0.1",
        "parameters": [params[k] for k in sorted(params)],
        "unsupported": sorted(unsupported, key=lambda u: (u["base"], u["code"], u["expression"])),
        "compartments": dict(sorted(compartments.items())),
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    print(f"{len(params)} parameters, {len(unsupported)} unsupported expressions -> {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
