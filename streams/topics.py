"""Placeholder: filled in by its issue."""


def add_arguments(parser):
    pass


def run(args, settings):
    raise SystemExit("not implemented yet")
