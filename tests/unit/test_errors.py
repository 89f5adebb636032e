"""What leaves a site is built from our own fixed texts: checked over every raise in the package, and at run time."""

from __future__ import annotations

import ast
from pathlib import Path

import oncofl
from oncofl.errors import DicomReadError, SiteDataError, SiteDataErrors, case_error, known

PACKAGE = Path(oncofl.__file__).parent
ERROR_CALLS = {"OncoFLError", "SiteConfigError", "SiteDataError", "DicomReadError", "NiftiReadError", "fail"}
# names a problem/fix text may interpolate: positions and values that come from our own code, never from a file
POSITION_NAMES = {"i", "index", "split", "kind", "tag", "site_name"}
# numbers our own code passes in (bounds, expected counts), never values read from a file
BOUND_NAMES = {"low", "high", "count"}
# site_config.py collects its problems in a list whose every append is checked here too
CHECKED_LISTS = {"site_config.py": "problems"}
ALLOWED_CALLS = {"sorted", "len"}  # over our own constants only (every Name inside is checked too)


def _fixed(node: ast.expr, names: frozenset[str] = frozenset()) -> bool:
    """True when ``node`` can only produce our own text: literals, UPPER_CASE constants, positions, exception
    *types* (``type(e).__name__``) and :func:`oncofl.errors.known` (a value checked against a fixed vocabulary)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.JoinedStr):
        return all(_fixed(v.value, names) if isinstance(v, ast.FormattedValue) else True for v in node.values)
    if isinstance(node, ast.IfExp):  # the condition is not printed
        return _fixed(node.body, names) and _fixed(node.orelse, names)
    if isinstance(node, ast.BinOp):
        return _fixed(node.left, names) and _fixed(node.right, names)
    if isinstance(node, ast.Attribute) and node.attr == "__name__":
        return isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "type"
    if isinstance(node, ast.Attribute) and node.attr in ("lineno", "colno"):  # a position in a file
        return True
    if isinstance(node, ast.Name):
        return node.id in POSITION_NAMES | BOUND_NAMES or node.id in names or node.id.lstrip("_").isupper()
    if isinstance(node, ast.Call):
        func = node.func
        if getattr(func, "id", "") == "known":
            return True
        if isinstance(func, ast.Attribute) and func.attr == "join" and isinstance(func.value, ast.Constant):
            return all(_fixed(a, names) for a in node.args)
        return getattr(func, "id", "") in ALLOWED_CALLS and all(_fixed(a, names) for a in node.args)
    return False


def _texts(call: ast.Call) -> list[ast.expr]:
    """The problem and fix arguments of an error constructor / ``fail(problem, fix, path)`` call."""
    texts = list(call.args[:2] if getattr(call.func, "id", "") == "fail" else call.args[:1])
    return texts + [kw.value for kw in call.keywords if kw.arg in ("problem", "fix")]


def message_texts() -> list[tuple[str, ast.expr, frozenset[str]]]:
    """(where, expression, extra allowed names) of every problem / fix text in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        checked_list = CHECKED_LISTS.get(path.name, "")
        names = frozenset({checked_list} - {""})
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in ERROR_CALLS and path.name != "errors.py":
                texts = _texts(node)
                if [getattr(t, "id", "") for t in texts] == ["problem", "fix"]:
                    continue  # pixels.fail() hands its own arguments on; its callers are checked
            elif name == "append" and checked_list and getattr(func.value, "id", "") == checked_list:
                texts = list(node.args)
            else:
                continue
            found += [(f"{path.relative_to(PACKAGE)}:{node.lineno}", t, names) for t in texts]
    return found


def unfixed_texts() -> list[str]:
    return [f"{where}: {ast.unparse(t)}" for where, t, names in message_texts() if not _fixed(t, names)]


def test_every_problem_and_fix_in_the_package_is_fixed_text():
    """The class of leak: a raise that formats a header value, a path or an exception's message into the text that
    leaves the site. Values go into ``detail`` (local only); this fails on the first raise that does otherwise."""
    assert unfixed_texts() == []


def test_fixed_texts_pass_the_outgoing_guard_unchanged():
    """Our own sentences hold nothing the guard takes for a path or a name, so what the server reads is whole."""
    from oncofl.privacy import OutgoingGuard

    guard = OutgoingGuard()
    literals = [
        (where, c.value)
        for where, text, _ in message_texts()
        for c in ast.walk(text)
        if isinstance(c, ast.Constant) and isinstance(c.value, str)
    ]
    assert len(literals) > 50
    assert [(where, value) for where, value in literals if guard.redact(value) != value] == []


def test_the_checker_catches_values_in_messages():
    bad = ast.parse('fail(f"file holds no image (Modality {ds.Modality})", "fix", path)').body[0].value
    assert not all(_fixed(t) for t in _texts(bad))
    err = ast.parse('SiteDataError(f"x {e}", fix=f"y {type(e).__name__} {known(n, NAMES)} {i + 1}")').body[0].value
    assert [_fixed(t) for t in _texts(err)] == [False, True]


def test_server_message_holds_no_detail_path_or_value():
    err = DicomReadError(
        "file holds no image",
        fix="point the datalist at image series only",
        path="/data/DOE, JOHN/1.dcm",
        detail="Modality SMITH JANE",
        site="site-1",
        item="training case #3, image",
    )
    assert err.server_message() == (
        "[site-1] training case #3, image: file holds no image (DicomReadError). Fix: point the datalist at image "
        "series only"
    )
    assert "SMITH JANE" in err.local_message() and "/data/DOE, JOHN/1.dcm" in err.local_message()


def test_any_exception_of_a_case_becomes_a_typed_fixed_text_error():
    oserror = PermissionError(13, "Permission denied", "/data/MARKER, X/IM 1.dcm")
    err = case_error(oserror, "training case #1")
    assert err.path == "/data/MARKER, X/IM 1.dcm" and "MARKER" in err.local_message()
    assert "MARKER" not in err.server_message() and "(PermissionError)" in err.server_message()
    value = case_error(ValueError("could not convert string to float: 'MARKER Smith'"), "validation case #0")
    assert "MARKER" not in value.server_message() and "ValueError" in value.server_message()
    ours = SiteDataError("label file does not exist", fix="fix it", path="/x")
    assert case_error(ours, "training case #2") is ours and ours.item == "training case #2"


def test_several_bad_cases_are_all_listed_for_the_server_by_position():
    errors = [case_error(OSError(5, "I/O error", f"/d/MARKER{i}"), f"training case #{i}, image") for i in range(3)]
    text = SiteDataErrors(errors, site="site-2").server_message()
    assert all(f"training case #{i}, image: case cannot be loaded (OSError)" in text for i in range(3))
    assert "MARKER" not in text


def test_known_passes_only_vocabulary_values():
    assert known("JPEG 2000", {"JPEG 2000"}) == "JPEG 2000"
    assert known("1.2.3.MARKER", {"JPEG 2000"}, "unrecognized") == "unrecognized"


def test_a_transfer_syntax_uid_holding_text_is_never_quoted(tmp_path):
    """pydicom names an unknown UID by its own text: a crafted UID would reach the problem text unless mapped."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    from oncofl.dicom.reader import read_dicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.ZQXPHI.JANE.DOE")
        ds.save_as(tmp_path / "x.dcm")
        try:
            read_dicom(tmp_path / "x.dcm")
        except Exception as e:  # noqa: BLE001 - whatever the reader raises is reported through case_error
            err = case_error(e, "training case #0, image")
    assert "ZQXPHI" not in err.server_message() and "ZQXPHI" in err.local_message()  # the UID stays at the site
    assert "transfer syntax is not a standard one: no decoder exists for it (DicomReadError)" in err.server_message()
