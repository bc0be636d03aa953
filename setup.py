"""Generates quiver.v1 from proto/ at build time, so generated code is never committed or edited."""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def generate_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc  # build requirement (pyproject.toml)

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    out = ROOT / "quiver" / "v1"
    out.mkdir(exist_ok=True)
    (out / "__init__.py").write_text('"""Generated from proto/quiver/v1 by setup.py. Do not edit."""\n')
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={ROOT}",
            f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


# Every build (wheel, sdist, editable) regenerates first: setuptools needs quiver/v1 to exist
# before it even writes the package metadata.
generate_protos()
setup()
