"""The method registry: the name of every distillation method and its class.

It sits at the bottom of the package and imports nothing of it, so that the
layers above (the configuration, which fills in a method's defaults; the run
keys, which read its version) can look a method up without importing the
distillers. A method is listed when its module runs ``@register(...)``;
``import kdutils`` imports every family module of ``kdutils.distillers``, so
the built-in methods are always listed. ``kdutils.distillers`` re-exports all
of it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "METHODS",
    "STATUSES",
    "build",
    "check_status",
    "describe_status",
    "get_method",
    "register",
]

METHODS: dict[str, type] = {}


# Where a method comes from, as ``python -m kdutils methods`` and the chapters say it.
STATUSES = {
    "survey": "in the survey, §{section}",
    "added": "added by this book, beside §{section}",
    "after": "after the survey ({year}), beside §{section}",
    "stand-in": "stand-in, §{section}",
    "baseline": "baseline, Table 1 (§{section})",
}


def register(
    name: str,
    section: str,
    *,
    status: str = "survey",
    note: str = "",
    year: int | None = None,
) -> Callable[[type], type]:
    """Class decorator: ``@register("kd", section="1")`` adds a method to the registry.

    ``section`` is the survey section the method belongs to (or sits beside);
    ``status`` says where it comes from (a key of :data:`STATUSES`): described
    in the survey, added by this book, published after the survey (``year``
    then gives the year of publication, e.g. ``status="after", year=2022``),
    a stand-in for a survey method (``note`` then says which method and how
    this one differs), or a baseline.
    """
    if name != name.lower():
        raise ValueError(f"registry names are lowercase, got {name!r}")
    check_status(name, status, note, year)

    def deco(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        cls.method_name, cls.survey_section = name, section
        cls.status, cls.status_note, cls.status_year = status, note, year
        METHODS[name] = cls
        return cls

    return deco


def check_status(name: str, status: str, note: str, year: int | None = None) -> None:
    """Raise ``ValueError`` for an unknown status, a stand-in without its note,
    a method published after the survey without its year, or a year on any
    other status."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if status == "stand-in" and not note:
        raise ValueError(f"stand-in {name!r} must say what it stands for (note=...)")
    if status == "after":
        if (
            isinstance(year, bool)
            or not isinstance(year, int)
            or not 1000 <= year <= 9999
        ):
            raise ValueError(
                f"{name!r}, published after the survey, must give its year of "
                f"publication (year=2022, a four-digit int), got {year!r}"
            )
    elif year is not None:
        raise ValueError(
            f"year is only given with status='after'; {name!r} has status "
            f"{status!r} and year={year!r}"
        )


def describe_status(
    status: str, section: str, note: str = "", year: int | None = None
) -> str:
    """One line on where a method comes from, e.g. "added by this book, beside §2.2.1"
    or "after the survey (2022), beside §2.1" (``year`` is needed for ``after``)."""
    if status == "after" and year is None:
        raise ValueError("status 'after' is described with its year (year=...)")
    text = STATUSES[status].format(section=section, year=year)
    return f"{text}: {note}" if note else text


def get_method(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[name]


def build(name: str, student, teacher=None, **hparams):
    """Build a registered method in one line: ``build("kd", s, t, T=4.0)``."""
    cls = get_method(name)
    return (
        cls(student, teacher, **hparams)
        if cls.needs_teacher
        else cls(student, **hparams)
    )
