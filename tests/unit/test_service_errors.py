"""Every server error class carries its gRPC status code, and the tree in errors.py's docstring is the
tree in the code."""

import re

import grpc

from quiver.service import errors
from quiver.service.errors import ServiceError


def _all(cls: type[ServiceError]) -> list[type[ServiceError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _all(sub)]


def test_every_subclass_maps_to_its_own_status_code() -> None:
    classes = _all(ServiceError)[1:]
    assert {errors.InvalidRequest, errors.UnknownView, errors.VersionNotLoaded, errors.NotReady} <= set(classes)
    codes = [c.code for c in classes]
    assert all(isinstance(code, grpc.StatusCode) for code in codes)
    assert not {grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL} & set(codes)
    assert len(set(codes)) == len(codes), "two classes share a code: clients could not tell them apart"


def test_the_docstring_tree_names_every_class_with_its_code() -> None:
    doc = errors.__doc__ or ""
    documented = dict(re.findall(r"── (\w+)\s+([A-Z_]+)", doc))
    assert documented == {c.__name__: c.code.name for c in _all(ServiceError)[1:]}


def test_an_instance_keeps_its_message_and_code() -> None:
    e = errors.UnknownView("unknown view(s) ['nope']")
    assert str(e) == "unknown view(s) ['nope']" and e.code == grpc.StatusCode.NOT_FOUND
    assert not issubclass(errors.VersionRefused, ServiceError)  # refused versions never reach a client
