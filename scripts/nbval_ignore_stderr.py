"""pytest plugin: make nbval ignore stderr when it compares cell outputs.

nbval 0.11 compares stream outputs by their name, so stderr is compared like
stdout and a cell whose stderr differs, or appears in only one run, fails. What
goes to stderr here is progress bars (tqdm), warnings and log lines: they vary
between runs and say nothing about whether results reproduce. stdout, rich
outputs (text/plain, text/html, ...) and errors are still compared.

Loaded by `make test-nbval` with `-p nbval_ignore_stderr` (scripts/ on PYTHONPATH).
"""

import pytest


def pytest_report_header(config: pytest.Config) -> str:
    return "nbval: stderr streams are not compared (scripts/nbval_ignore_stderr.py)"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        nb_file = item.parent
        skip = getattr(nb_file, "skip_compare", None)
        if skip is not None and "stderr" not in skip:
            nb_file.skip_compare = (*skip, "stderr")
