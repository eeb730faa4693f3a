import no_such_dependency  # noqa: F401


def make():
    pass
