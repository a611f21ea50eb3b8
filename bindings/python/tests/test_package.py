"""The package surface: exports, exception hierarchy, and stubs that match the
native module exactly."""

import ast
import inspect
import pathlib

import pytest

import nanami
import nanami._nanami as native

STUB = pathlib.Path(nanami.__file__).with_name("_nanami.pyi")

# What every class gets from pyo3 or object and the stubs leave implicit.
IMPLICIT = {"__new__", "__doc__", "__module__", "__repr__", "__str__", "__hash__",
            "__lt__", "__le__", "__ne__", "__gt__", "__ge__", "__init__"}


def stub_tree():
    return ast.parse(STUB.read_text())


def test_stub_and_py_typed_ship_in_the_package():
    assert STUB.is_file()
    assert STUB.with_name("py.typed").is_file()


def test_all_is_the_native_module_public_surface():
    public = {n for n in dir(native) if not n.startswith("_")} | {"__version__"}
    assert set(nanami.__all__) == public
    for name in nanami.__all__:
        assert getattr(nanami, name) is getattr(native, name)
    assert nanami.__version__ == "0.1.0"


def test_exception_hierarchy():
    assert issubclass(nanami.NanamiError, Exception)
    for name in ["ParseError", "ValidationError", "InvalidIdError", "InvalidKeyError", "CompileError"]:
        assert getattr(nanami, name).__bases__ == (nanami.NanamiError,)
    for name in ["NotFoundError", "NodeNotActiveError", "NodeIsGatewayError"]:
        assert getattr(nanami, name).__bases__ == (nanami.CompileError,)
    for name in ["ApiError", "ManagerUnreachableError"]:
        assert getattr(nanami, name).__bases__ == (nanami.NanamiError,)
    for name in ["ConflictError", "ObjectNotFoundError", "ForbiddenError", "UnauthorizedError"]:
        assert getattr(nanami, name).__bases__ == (nanami.ApiError,)
    for name in nanami.__all__:
        obj = getattr(nanami, name)
        if isinstance(obj, type):
            assert obj.__module__ == "nanami", name


def stub_signature(fn: ast.FunctionDef):
    args = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
    if args and args[0] == "self":
        args = args[1:]
    return args


def runtime_params(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [p for p in sig.parameters if p not in ("self", "$self")]


def test_stub_names_match_the_module_exactly():
    tree = stub_tree()
    stub_names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            stub_names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stub_names.add(node.target.id)
    stub_names = {n for n in stub_names if not n.startswith("_") or n == "__version__"}
    runtime = {n for n in dir(native) if not n.startswith("_")} | {"__version__"}
    assert stub_names == runtime


def test_stub_functions_match_signatures():
    for node in stub_tree().body:
        if isinstance(node, ast.FunctionDef):
            assert runtime_params(getattr(native, node.name)) == stub_signature(node), node.name


def class_members(node: ast.ClassDef):
    members = {}
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            decorators = {d.id for d in item.decorator_list if isinstance(d, ast.Name)}
            kind = "property" if "property" in decorators else "static" if "staticmethod" in decorators else "method"
            members[item.name] = (kind, item)
    return members


@pytest.mark.parametrize(
    "cls_node",
    # Names with a leading underscore are the stubs' own (the TypedDicts of the
    # objects' document form); they do not exist at run time.
    [n for n in ast.parse(STUB.read_text()).body
     if isinstance(n, ast.ClassDef) and not n.name.startswith("_")],
    ids=lambda n: n.name,
)
def test_stub_class_matches_runtime_class(cls_node):
    cls = getattr(native, cls_node.name)
    stub_bases = [b.id for b in cls_node.bases if isinstance(b, ast.Name)]
    assert [b.__name__ for b in cls.__bases__] == (stub_bases or ["object"])
    if issubclass(cls, BaseException):
        return  # attributes of exceptions are set when raised (tested elsewhere)
    members = class_members(cls_node)
    runtime = {k: v for k, v in vars(cls).items() if k not in IMPLICIT}
    # pyo3's __getattr__ slot shows as __getattribute__.
    if "__getattribute__" in runtime:
        runtime["__getattr__"] = runtime.pop("__getattribute__")
    stub_members = set(members) - IMPLICIT
    assert set(runtime) == stub_members, cls_node.name
    for name, (kind, fn) in members.items():
        if name in IMPLICIT:
            continue
        raw = vars(cls)[name] if name != "__getattr__" else vars(cls)["__getattribute__"]
        if kind == "property":
            assert type(raw).__name__ == "getset_descriptor", name
        elif kind == "static":
            assert isinstance(raw, staticmethod), name
            assert runtime_params(getattr(cls, name)) == stub_signature(fn), name
        else:
            assert not isinstance(raw, staticmethod), name
            if name.startswith("__"):
                continue
            params = runtime_params(getattr(cls, name))
            if params is not None:
                assert params == stub_signature(fn), name
    if "__init__" in members:
        assert runtime_params(cls) == stub_signature(members["__init__"][1])
    eq_in_stub = "__eq__" in members
    assert eq_in_stub == ("__eq__" in vars(cls)), cls_node.name
    hash_in_stub = "__hash__" in members
    assert hash_in_stub == (vars(cls).get("__hash__", "absent") not in (None, "absent")), cls_node.name
