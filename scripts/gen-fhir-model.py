#!/usr/bin/env python3
"""Derive schemas/fhir-r4-model.json from the official FHIR R4 (4.0.1) definitions.

Source: the npm package hl7.fhir.r4.examples@4.0.1 (CC0), which carries HL7's own
StructureDefinitions, ValueSets and CodeSystems. The output is a compact structural model the
server's validator compiles at start-up: for every resource and data type, its JSON properties
(choice types expanded, `_x` companions of primitives), their type, cardinality, and the codes
of required bindings on `code` elements that can be enumerated.

Usage: scripts/gen-fhir-model.py [PACKAGE_DIR]
Without PACKAGE_DIR the package is fetched with `npm pack` into a temporary folder.
The output is deterministic: re-running it on the same package gives the same bytes, and a test
(`fhir::model` unit tests) checks the committed file still parses and covers every R4 type.
"""

import glob
import json
import os

from fhir_package import package_dir

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "schemas", "fhir-r4-model.json")
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"


def load_all(pkg, prefix):
    out = {}
    for path in sorted(glob.glob(os.path.join(pkg, prefix + "-*.json"))):
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        if "url" in res:
            out[res["url"]] = res
    return out


def code_system_codes(cs):
    codes = []

    def walk(concepts):
        for c in concepts or []:
            codes.append(c["code"])
            walk(c.get("concept"))

    walk(cs.get("concept"))
    return codes


def expand(vs_url, value_sets, code_systems, seen=()):
    """Codes of a value set, or None where it cannot be enumerated here (external systems, filters)."""
    vs = value_sets.get(vs_url.split("|")[0])
    if vs is None or vs_url in seen:
        return None
    compose = vs.get("compose") or {}
    if compose.get("exclude"):
        return None
    codes = []
    for inc in compose.get("include", []):
        if inc.get("filter"):
            return None
        for nested in inc.get("valueSet", []):
            sub = expand(nested, value_sets, code_systems, seen + (vs_url,))
            if sub is None:
                return None
            codes.extend(sub)
        if "system" in inc:
            if inc.get("concept"):
                codes.extend(c["code"] for c in inc["concept"])
            else:
                cs = code_systems.get(inc["system"])
                if cs is None or cs.get("content") not in ("complete", None):
                    return None
                codes.extend(code_system_codes(cs))
    if not codes:
        return None
    # Keep first occurrences, in definition order.
    return list(dict.fromkeys(codes))


def type_code(t):
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext["url"] == FHIR_TYPE_EXT:
                return ext["valueUrl"], True
        return "string", True
    return code, False


def main():
    pkg = package_dir()
    sds = {u: sd for u, sd in load_all(pkg, "StructureDefinition").items()
           if u.startswith(SD_PREFIX)
           and (sd.get("derivation") == "specialization" or "baseDefinition" not in sd)
           and sd.get("kind") in ("resource", "complex-type", "primitive-type")}
    value_sets = load_all(pkg, "ValueSet")
    code_systems = load_all(pkg, "CodeSystem")

    primitives = {}
    for sd in sds.values():
        if sd["kind"] != "primitive-type":
            continue
        regex = None
        for e in sd["snapshot"]["element"]:
            if e["path"] == sd["type"] + ".value":
                for t in e.get("type", []):
                    for ext in t.get("extension", []):
                        if ext["url"] == REGEX_EXT:
                            regex = ext["valueString"]
        primitives[sd["type"]] = regex
    prim_names = set(primitives)

    resources = sorted(sd["type"] for sd in sds.values()
                       if sd["kind"] == "resource" and not sd.get("abstract"))
    types = {}
    value_set_codes = {}

    for sd in sorted(sds.values(), key=lambda s: s["type"]):
        if sd["kind"] == "primitive-type":
            continue
        root = sd["type"]
        is_resource = sd["kind"] == "resource"
        for e in sd["snapshot"]["element"]:
            path = e["path"]
            if "." not in path:
                types.setdefault(path, {"elements": {}, "required": [], "choices": []})
                continue
            parent, name = path.rsplit(".", 1)
            owner = types.setdefault(parent, {"elements": {}, "required": [], "choices": []})
            array = e["max"] != "1" and e["max"] != "0"
            if e["max"] == "0":
                continue
            xml_attr = "xmlAttr" in (e.get("representation") or [])
            if "contentReference" in e:
                targets = [(e["contentReference"].lstrip("#"), False)]
            else:
                targets = [type_code(t) for t in e.get("type", [])]
            names = []
            for code, system in targets:
                if code in ("BackboneElement", "Element") and "contentReference" not in e and \
                        path != root + ".extension":
                    code = path
                if is_resource and path == root + ".id":
                    code = "id"
                if name.endswith("[x]"):
                    prop = name[:-3] + code[0].upper() + code[1:]
                else:
                    prop = name
                spec = {"type": code}
                if array:
                    spec["array"] = True
                binding = e.get("binding") or {}
                if code == "code" and binding.get("strength") == "required" and binding.get("valueSet"):
                    codes = expand(binding["valueSet"], value_sets, code_systems)
                    if codes is not None:
                        vs_key = binding["valueSet"].split("|")[0].rsplit("/", 1)[-1]
                        value_set_codes[vs_key] = codes
                        spec["valueSet"] = vs_key
                owner["elements"][prop] = spec
                names.append(prop)
                if code in prim_names and not system and not xml_attr:
                    companion = {"type": "Element"}
                    if array:
                        companion["array"] = True
                    owner["elements"]["_" + prop] = companion
            if name.endswith("[x]") and len(names) > 1:
                owner["choices"].append(names)
            if e["min"] > 0:
                alternatives = []
                for n in names:
                    alternatives.append(n)
                    if "_" + n in owner["elements"]:
                        alternatives.append("_" + n)
                owner["required"].append(alternatives)

    model = {
        "source": "hl7.fhir.r4.examples@4.0.1 (CC0): StructureDefinitions, ValueSets, CodeSystems",
        "generator": "scripts/gen-fhir-model.py",
        "fhirVersion": "4.0.1",
        "resources": resources,
        "primitives": dict(sorted(primitives.items())),
        "valueSets": dict(sorted(value_set_codes.items())),
        "types": dict(sorted(types.items())),
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(model, f, indent=None, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    print(f"{OUT}: {len(resources)} resources, {len(types)} types, {len(value_set_codes)} value sets")


if __name__ == "__main__":
    main()
