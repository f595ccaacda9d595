"""Pin what sdopt does, the way an app pins a dependency: freeze once, commit the file, replay.

python examples/pin_preset.py [PRESET_FILE]   # default: sdopt-preset.toml in a temp directory

The first run on a machine writes the preset (what `balanced` plans here, fully resolved); every
later run replays it and checks that it applies exactly the pinned steps. Runs offline on a tiny
random-weight pipeline; in an app, replace `tiny_pipeline("sd")` by your `from_pretrained(...)`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import sdopt.logging
from sdopt import Preset, optimize
from sdopt.testing import tiny_pipeline


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "sdopt-preset.toml"

    if not path.exists():  # done once, e.g. by `sdopt freeze --tier balanced --model ... -o FILE`
        report = optimize(tiny_pipeline("sd"), tier="balanced", dry_run=True)
        report.to_preset("my-app").save(path)
        print(f"froze {report.source} into {path}")

    preset = Preset.load(path)
    pipe = tiny_pipeline("sd")
    # strict: refuse (changing nothing) if this machine differs from the one the preset was frozen on.
    report = optimize(pipe, preset=preset, strict=True)
    print(report)
    applied = [decision.name for decision in report.applied]
    assert applied == preset.names(), f"the preset did not replay exactly: {applied} != {preset.names()}"
    print(f"replayed {preset.label} exactly: {', '.join(applied) or 'nothing to apply here'}")


if __name__ == "__main__":
    main()
