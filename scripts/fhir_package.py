"""The FHIR R4 definitions package the generators in this folder read.

hl7.fhir.r4.examples@4.0.1 (CC0) carries HL7's own StructureDefinitions, ValueSets,
CodeSystems and SearchParameters.
"""

import os
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "hl7.fhir.r4.examples@4.0.1"


def package_dir():
    """The unpacked package: the first command-line argument, or fetched with `npm pack`."""
    if len(sys.argv) > 1:
        return sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="fhir-r4-")
    subprocess.run(["npm", "pack", PACKAGE], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    with tarfile.open(os.path.join(tmp, "hl7.fhir.r4.examples-4.0.1.tgz")) as tar:
        tar.extractall(tmp, filter="data")
    return os.path.join(tmp, "package")
