import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# `pytest --hypothesis-profile nightly` (make fuzz): the long differential-fuzzing run. Unlike make test's
# derandomized profile it draws new graphs every run (a fixed seed would re-check the same 20,000 each night);
# make fuzz prints the seed it passes (`make fuzz SEED=N` repeats a run), hypothesis a failure's reproduce blob
settings.register_profile(
    "nightly",
    parent=settings.get_profile("default"),
    max_examples=20_000,
    derandomize=False,
    database=None,
    print_blob=True,
)


def pytest_terminal_summary(terminalreporter):
    """How many fuzzed graphs each kind and precision ran (tests/test_fuzz_numerics.py)."""
    import sys

    mod = sys.modules.get("tests.test_fuzz_numerics") or sys.modules.get("test_fuzz_numerics")
    counts = getattr(mod, "COUNTS", None)
    mutation = getattr(mod, "MUTATION", None)
    if mutation:
        terminalreporter.write_line(
            f"planted int8 bug: caught by {mutation['caught']} of {mutation['tried']} fuzzed graphs"
        )
    if not counts:
        return
    terminalreporter.write_line(f"fuzzed graphs: {sum(counts.values())}")
    for (kind, prec), n in sorted(counts.items()):
        terminalreporter.write_line(f"  {kind:16s} {prec:22s} {n}")
