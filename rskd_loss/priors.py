"""Shipped region / phenotype priors for the region- and feature-based class partitions.

A prior says, for one label set, in which fundus region each class's defining sign appears
(``"region"``, Ju et al. MICCAI 2021 Table 1: optic disc, macula, vessels, global) and which classes
share a visible phenotype (``"feature"``, Sec. 2.1). Priors are JSON files in the package folder
``rskd_loss/priors/``; every ``*.json`` there is found by :func:`available_priors`, so a new file
(e.g. ``synthetic.json`` written by the synthetic-data helper) appears without a code change.

The format, checked by :func:`validate_prior`::

    {"name": "rfmid",                      # non-empty string
     "description": "...",                 # string
     "sources": ["..."],                   # list of strings (papers, repositories)
     "classes": ["DR", "ARMD", ...],       # every class, unique, in the data set's column order
     "region":  {"optic_disc": [...], "macula": [...], "vessels": [...], "global": [...]},
     "feature": {"hemorrhage": [...], ...},
     "notes":   {"DR": "why ...", ...}}    # optional: string -> string

``region`` and ``feature`` map a group name to a non-empty list of class names; every class of
``classes`` is in exactly one group of each, and a group names no class outside ``classes``. The
group order in the file is the subset order of the partition. No other key is accepted, and a key
repeated inside one JSON object is refused (plain ``json`` would silently keep the last one).
A prior may list more classes than a data set has (the shipped ``synthetic`` prior covers every class
the generator can draw); every class of the data set must be in it (:func:`resolve_prior`).

**Your own data set.** The region and feature rules need a prior for *your* classes: a JSON file in
the format above, passed by path wherever a prior name is taken (``method.partition.prior`` of the
recipes, ``SubsetPartitioner(prior=...)``). Start from the template that lists your classes, each in
a group of its own (so it is valid and runs, but groups nothing yet), with the recipes' command or
:func:`template_prior`::

    python -m recipes.data.describe --csv data/mine/labels.csv --write-prior data/mine/prior.json

then edit ``"region"`` (where each class's sign is seen, e.g. the four regions of Ju et al. Table 1:
``optic_disc``, ``macula``, ``vessels``, ``global``) and ``"feature"`` (classes that share a visible
phenotype) by moving class names into shared groups and deleting the emptied ones.

Example:
    >>> from rskd_loss.priors import available_priors, load_prior
    >>> "rfmid" in available_priors()
    True
    >>> prior = load_prior("rfmid")
    >>> len(prior["classes"]), list(prior["region"])
    (45, ['optic_disc', 'macula', 'vessels', 'global'])
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from .errors import RSKDError

__all__ = [
    "PriorError",
    "resolve_prior",
    "template_prior",
    "how_to_write_prior",
    "PRIOR_KEYS",
    "REQUIRED_PRIOR_KEYS",
    "GROUPING_KEYS",
    "available_priors",
    "load_prior",
    "validate_prior",
]

REQUIRED_PRIOR_KEYS = ("name", "description", "sources", "classes", "region", "feature")
PRIOR_KEYS = REQUIRED_PRIOR_KEYS + ("notes",)
GROUPING_KEYS = ("region", "feature")

_PACKAGE = "rskd_loss"
_FOLDER = "priors"
TEMPLATE_COMMAND = "python -m recipes.data.describe --csv YOUR_LABELS.csv --write-prior my_prior.json"


class PriorError(RSKDError, ValueError):
    """No prior, or one that does not cover the data set's classes; the message says how to write one."""


def _prior_folder() -> Any:
    return resources.files(_PACKAGE).joinpath(_FOLDER)


def available_priors() -> tuple[str, ...]:
    """Names of the priors shipped with the package (the stems of ``rskd_loss/priors/*.json``), sorted."""
    folder = _prior_folder()
    if not folder.is_dir():
        return ()
    return tuple(
        sorted(
            entry.name[: -len(".json")]
            for entry in folder.iterdir()
            if entry.is_file() and entry.name.endswith(".json")
        )
    )


def _check_str_list(value: object, what: str, source: str, *, allow_empty: bool) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{source}: {what} must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{source}: {what}[{i}] must be a non-empty string, got {item!r}")
    if not allow_empty and not value:
        raise ValueError(f"{source}: {what} must not be empty")
    return list(value)


def _check_grouping(
    grouping: object, key: str, classes: list[str], source: str
) -> dict[str, list[str]]:
    if not isinstance(grouping, dict):
        raise ValueError(
            f"{source}: {key!r} must be an object {{group: [class names]}}, got {type(grouping).__name__}"
        )
    if not grouping:
        raise ValueError(f"{source}: {key!r} must have at least one group")
    known = set(classes)
    owner: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for group, members in grouping.items():
        if not isinstance(group, str) or not group:
            raise ValueError(f"{source}: {key!r} group names must be non-empty strings, got {group!r}")
        members = _check_str_list(members, f"{key}[{group!r}]", source, allow_empty=False)
        unknown = [m for m in members if m not in known]
        if unknown:
            raise ValueError(
                f"{source}: {key}[{group!r}] names class(es) not in 'classes': {unknown[:10]}"
            )
        for m in members:
            if m in owner:
                where = "twice in group" if owner[m] == group else "in two groups:"
                detail = repr(group) if owner[m] == group else f"{owner[m]!r} and {group!r}"
                raise ValueError(
                    f"{source}: class {m!r} is {where} {detail} of {key!r}; each class must be in "
                    f"exactly one {key} group"
                )
            owner[m] = group
        out[group] = members
    missing = [c for c in classes if c not in owner]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} class(es) are in no {key!r} group, expected every class in "
            f"exactly one: {missing[:10]}" + (" ..." if len(missing) > 10 else "")
        )
    return out


def validate_prior(prior: Mapping[str, Any], *, source: str = "<prior>") -> dict[str, Any]:
    """Check a prior in the format above and return a normalised deep copy.

    Raises ``ValueError`` naming ``source`` (the file, or ``"<prior>"``) and what is wrong: an unknown
    or missing key, a class in two groups or in none, a group naming an unknown class, a wrong type.
    """
    if not isinstance(prior, Mapping):
        raise ValueError(f"{source}: a prior must be a JSON object, got {type(prior).__name__}")
    unknown = sorted(str(k) for k in prior if k not in PRIOR_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed keys are {PRIOR_KEYS}")
    missing = [k for k in REQUIRED_PRIOR_KEYS if k not in prior]
    if missing:
        raise ValueError(f"{source}: missing required key(s) {missing}; required are {REQUIRED_PRIOR_KEYS}")
    name = prior["name"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: 'name' must be a non-empty string, got {name!r}")
    if not isinstance(prior["description"], str):
        raise ValueError(
            f"{source}: 'description' must be a string, got {type(prior['description']).__name__}"
        )
    sources = _check_str_list(prior["sources"], "'sources'", source, allow_empty=True)
    classes = _check_str_list(prior["classes"], "'classes'", source, allow_empty=False)
    seen: dict[str, int] = {}
    for i, c in enumerate(classes):
        if c in seen:
            raise ValueError(
                f"{source}: 'classes' must be unique, got {c!r} at positions {seen[c]} and {i}"
            )
        seen[c] = i
    out: dict[str, Any] = {
        "name": name,
        "description": prior["description"],
        "sources": sources,
        "classes": classes,
    }
    for key in GROUPING_KEYS:
        out[key] = _check_grouping(prior[key], key, classes, source)
    if "notes" in prior:
        notes = prior["notes"]
        if not isinstance(notes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in notes.items()
        ):
            raise ValueError(f"{source}: 'notes' must be an object of strings {{topic: text}}")
        out["notes"] = dict(notes)
    return copy.deepcopy(out)


def _parse(text: str, source: str) -> Any:
    """Parse JSON text; an object with a repeated key is refused (``json`` would keep the last one)."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"{source}: key {key!r} is repeated in one JSON object")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc})") from exc


def load_prior(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a prior: the name of a shipped one, or the path of a JSON file.

    A string that names a shipped prior (see :func:`available_priors`) loads that file with
    :mod:`importlib.resources`; a shipped prior's ``"name"`` must equal its file name. Any other
    string ending in ``.json`` or containing a path separator, or any :class:`os.PathLike`, is read
    as a file. Each call returns a fresh dict, so changing it changes nothing else.

    Raises:
        ValueError: unknown prior name (the message lists the shipped ones), or an invalid file
            (the message names the file).
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(name_or_path, os.PathLike):
        path = os.fspath(name_or_path)
    elif isinstance(name_or_path, str):
        if name_or_path in available_priors():
            resource = _prior_folder().joinpath(name_or_path + ".json")
            source = f"shipped prior {name_or_path!r} (rskd_loss/priors/{name_or_path}.json)"
            prior = validate_prior(_parse(resource.read_text(encoding="utf-8"), source), source=source)
            if prior["name"] != name_or_path:
                raise ValueError(
                    f"{source}: 'name' must equal the file name {name_or_path!r}, got {prior['name']!r}"
                )
            return prior
        looks_like_path = name_or_path.endswith(".json") or os.sep in name_or_path or "/" in name_or_path
        if not looks_like_path:
            raise ValueError(
                f"unknown prior {name_or_path!r}: expected one of the shipped priors "
                f"{available_priors()} or the path of a prior JSON file"
            )
        path = name_or_path
    else:
        raise TypeError(
            f"name_or_path must be a prior name or a path, got {type(name_or_path).__name__}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prior file {path!r} does not exist")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return validate_prior(_parse(text, f"prior file {path!r}"), source=f"prior file {path!r}")


def how_to_write_prior(key: str = "method.partition.prior") -> str:
    """The sentence that tells a user how to write a prior (format, template command, setting)."""
    return (f"write a prior for your classes (format: rskd_loss/priors.py module doc, recipes/README.md "
            f"'Your own data'); a starting one listing them: {TEMPLATE_COMMAND} (in Python: "
            f"rskd_loss.priors.template_prior(class_names)), then set {key}='my_prior.json'")


def resolve_prior(
    prior: str | os.PathLike[str] | Mapping[str, Any] | None,
    class_names: Sequence[str],
    *,
    default: str | None = None,
    key: str = "method.partition.prior",
    data: str = "this data set",
) -> dict[str, Any]:
    """The validated prior for ``class_names``: ``prior`` (a shipped name, a JSON path or a prior
    dict), else ``default`` (the prior shipped for the data set, e.g. ``"synthetic"``).

    Raises :class:`PriorError` when there is none (``prior`` and ``default`` both ``None``) or when
    classes of ``class_names`` are not in the prior: the message lists the missing classes, the
    prior's source, and how to write one (the template command; ``key`` names the setting).
    ``FileNotFoundError`` for a path that does not exist (also naming the template command).

    Example:
        >>> p = resolve_prior(None, ["hemorrhage", "drusen"], default="synthetic")
        >>> p["name"]
        'synthetic'
    """
    names = [str(c) for c in class_names]
    chosen = default if prior is None else prior
    if chosen is None:
        raise PriorError(f"{key} is not set, and the region and feature rules need a prior for the "
                         f"{len(names)} classes of {data} (only the synthetic and RFMiD data sets ship one); "
                         + how_to_write_prior(key))
    if isinstance(chosen, Mapping):
        loaded, source = validate_prior(chosen, source="prior dict"), "the prior dict"
    else:
        try:
            loaded = load_prior(chosen)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc} ({key}); {how_to_write_prior(key)}") from None
        except PriorError:
            raise
        except ValueError as exc:
            raise PriorError(f"{exc} ({key}); {how_to_write_prior(key)}") from None
        source = f"prior {os.fspath(chosen)!r}"
        if prior is None:
            source += f" (the default of {data}; {key} chooses another)"
    known = set(loaded["classes"])
    missing = [c for c in names if c not in known]
    if missing:
        shown = missing if len(missing) <= 20 else missing[:20] + [f"... {len(missing) - 20} more"]
        raise PriorError(f"{source} lacks {len(missing)} of the {len(names)} classes of {data}: {shown} "
                         f"(it has {len(known)} classes, e.g. {loaded['classes'][:5]}); " + how_to_write_prior(key))
    if len(names) > 1 and all(len(m) == 1 for k in GROUPING_KEYS for m in loaded[k].values()):
        import warnings

        warnings.warn(f"{source} groups nothing (every class in a group of its own, as the template "
                      f"writes it): the region and feature rules give one subset per class; edit its groups",
                      UserWarning, stacklevel=2)
    return loaded


def template_prior(class_names: Sequence[str], name: str = "my_prior") -> dict[str, Any]:
    """A valid starting prior for ``class_names``: every class in a ``region`` and a ``feature`` group
    of its own (so nothing is grouped yet; edit the groups, see the module doc)."""
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names must name at least one class, got none")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ValueError(f"class_names must be unique, got {dup} more than once")
    prior = {
        "name": name,
        "description": "TEMPLATE (rskd_loss.priors.template_prior): every class is in a group of its "
                       "own. Edit 'region' (where each class's sign is seen, e.g. optic_disc, macula, "
                       "vessels, global as in Ju et al. MICCAI 2021 Table 1) and 'feature' (classes sharing a "
                       "visible phenotype): move class names into shared groups and delete emptied groups.",
        "sources": [],
        "classes": names,
        "region": {c: [c] for c in names},
        "feature": {c: [c] for c in names},
    }
    return validate_prior(prior, source="template")
