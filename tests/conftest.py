import pytest

pytest_plugins = ["tests.support.fixtures"]

# `make test` runs three test processes, each taking a whole file at a time in collection
# order: a long file taken last keeps the run waiting for it alone. These go first (a minute or
# more each: the deploy test builds its image from nothing with debootstrap on a new machine).
LONGEST_FILES = (
    "integration/test_deploy.py",
    "e2e/test_faults.py",
    "e2e/test_partitions.py",
    "e2e/test_admission.py",
    "e2e/test_scale_out.py",
    "e2e/test_hostile_input.py",  # schemathesis's fixed set of cases: 30 s alone, 90 under load
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: every file keeps its own order
