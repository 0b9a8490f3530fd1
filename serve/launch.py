"""`python -m smallnets.serve.launch ARGS` = `bentoml ARGS` with a Prometheus multiprocess folder of its own.

BentoML keeps the metrics of its worker processes in ``$BENTOML_HOME/prometheus_multiproc_dir`` and empties that
folder whenever a server starts, so two servers on one machine wiped and mixed each other's /metrics. This
launcher points BentoML's setting (``BentoMLContainer.prometheus_multiproc_dir``; BentoML ignores the
PROMETHEUS_MULTIPROC_DIR variable and sets it for its workers from this setting) at a fresh temporary folder,
removed when the server exits, so any number of servers can run side by side.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence


def main(argv: Sequence[str]) -> None:
    folder = tempfile.mkdtemp(prefix="smallnets-metrics-")
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        BentoMLContainer.prometheus_multiproc_dir.set(folder)
        from bentoml_cli.cli import cli

        cli.main(args=list(argv), prog_name="bentoml")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
