"""Spec loading: YAML documents under specs/ -> validated `Desired` state.

The first stage of the pipeline (load -> observe -> plan -> apply), pure but
for reading the spec files (documents.py): the checks it makes of the files
an image names (a kernel, an ext4 rootfs, a directory inside it) are asked
of an `ImageProbe` passed in. Each object is checked against its schema
(schema.py); checks across objects (duplicates, references, overlapping
CIDRs, one default image, IPs) follow. Every problem becomes a SpecError
naming FILE:LINE: FIELD; valid objects are still returned so they can
converge in the same pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol

from ..base.errors import SpecError
from ..base.kinds import Accel, BootMode
from ..base.model import VM, Desired, Image, Network, Source, WorkSeed
from .documents import Document, FieldPath, dotted, read_documents, spec_files
from .kinds import METADATA, SCHEMAS, ImageSpec, Metadata, NetworkSpec, VMSpec, WorkSeedSpec
from .schema import API_VERSION, BRIDGE_MAX_PORTS, MAX_MEMORY, MIN_MEMORY, NAME, Schema, suggest


class ImageProbe(Protocol):
    """What spec loading asks of the files an image names (disks/observe.py has the real one)."""

    def is_file(self, path: Path) -> bool: ...

    def is_dir(self, path: Path) -> bool: ...

    def is_kernel(self, path: Path) -> bool: ...

    def is_ext4(self, path: Path) -> bool: ...

    def has_dir(self, rootfs: Path, inner: str) -> bool: ...


def load(root: Path, probe: ImageProbe, beside: Sequence[Document] = ()) -> Desired:
    """Load and validate every spec under `root`; never raises for bad input. `beside`: documents that
    exist already (the fleet's stored specs), checked together with the files; an object a file
    defines replaces the stored one of its kind and name."""
    loader = _Loader(root, probe)
    read: list[Document] = []
    for path in spec_files(root):
        docs, errors = read_documents(path, loader.shown(path))
        loader.errors.extend(errors)
        if not docs and not errors:
            loader.empty.append(loader.shown(path))  # an editor mid-save, a truncation: never "delete all"
        read += docs
    named = {_key(doc) for doc in read}
    for doc in [*(d for d in beside if _key(d) not in named), *read]:
        loader.add(doc)
    return loader.finish()


def _key(doc: Document) -> tuple[object, object]:
    body = doc.body if isinstance(doc.body, dict) else {}
    meta = body.get("metadata")
    return body.get("kind"), meta.get("name") if isinstance(meta, dict) else None


_ENVELOPE = ("apiVersion", "kind", "metadata", "spec")


class _Loader:
    def __init__(self, root: Path, probe: ImageProbe) -> None:
        self.root = root
        self.probe = probe
        self.errors: list[SpecError] = []
        self.objects: dict[tuple[str, str], tuple[Document, NetworkSpec | ImageSpec | VMSpec]] = {}
        self.invalid: set[tuple[str, str]] = set()  # kind+name seen but invalid: referencing it is no new error
        self.first: dict[tuple[str, str], Document] = {}  # where each kind+name was first defined
        self.empty: list[str] = []

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def error(self, doc: Document, path: FieldPath, message: str) -> None:
        self.errors.append(SpecError(self.shown(doc.file), doc.line_of(path), dotted(path), message))

    def add(self, doc: Document) -> None:
        body = doc.body
        if not isinstance(body, dict):
            return self.error(doc, (), "a spec must be a mapping with apiVersion, kind, metadata and spec")
        unknown = sorted(set(body) - set(_ENVELOPE), key=str)
        for key in unknown:
            self.error(doc, (str(key),), "unknown field" + suggest(str(key), list(_ENVELOPE)))
        if body.get("apiVersion") != API_VERSION:
            return self.error(doc, ("apiVersion",), f"must be {API_VERSION!r}, got {body.get('apiVersion')!r}")
        kind = body.get("kind")
        if kind not in SCHEMAS:
            return self.error(doc, ("kind",), f"unknown kind {kind!r}; expected one of {', '.join(SCHEMAS)}")
        name = self._name(doc, kind)
        if name is None or unknown:
            return
        key = (kind, name)
        spec = self._validate(doc, SCHEMAS[kind], body.get("spec") or {}, ("spec",))
        if key in self.first:
            return self._defined_twice(key, doc)
        self.first[key] = doc
        if spec is None:
            self.invalid.add(key)
            return
        self.objects[key] = (doc, spec)

    def _defined_twice(self, key: tuple[str, str], doc: Document) -> None:
        """Both definitions are errors and neither is applied (which one won would depend on file
        order); whatever existed before is left as it was, since deletions wait for valid specs."""
        first = self.first[key]
        kind, name = key
        if key not in self.invalid or key in self.objects:
            self.error(first, ("metadata", "name"),
                       f"{kind} {name!r} is defined twice: here and at {self.shown(doc.file)}:{doc.line}")
        self.objects.pop(key, None)
        self.invalid.add(key)
        self.error(doc, ("metadata", "name"),
                   f"{kind} {name!r} is defined twice: here and at {self.shown(first.file)}:{first.line}")

    def _name(self, doc: Document, kind: str) -> str | None:
        meta: Metadata | None = self._validate(doc, METADATA, doc.body.get("metadata"), ("metadata",))
        if meta is None:
            return None
        if len(meta.name) > 63 or not NAME.match(meta.name):
            self.error(doc, ("metadata", "name"),
                       f"{meta.name!r} is not a valid name (lowercase letters, digits and '-', at most 63)")
            self.invalid.add((kind, meta.name))
            return None
        return meta.name

    def _validate(self, doc: Document, schema: Schema[Any], data: Any, at: FieldPath) -> Any:
        errors: list[tuple[FieldPath, str]] = []
        value = schema.validate(data, at, errors)
        for path, message in errors:
            self.error(doc, path, message)
        return value

    def finish(self) -> Desired:
        networks: dict[str, Network] = {}
        images: dict[str, Image] = {}
        for (_, name), (doc, spec) in self.objects.items():
            if isinstance(spec, NetworkSpec):
                networks[name] = self._network(name, doc, spec)
            elif isinstance(spec, ImageSpec) and (image := self._image(name, doc, spec)) is not None:
                images[name] = image
        self._check_networks(networks)
        default = self._default_image(images)
        vms: dict[str, VM] = {}
        for (_, name), (doc, spec) in self.objects.items():
            if isinstance(spec, VMSpec) and (vm := self._vm(name, doc, spec, networks, images, default)) is not None:
                vms[name] = vm
        self._check_capacity(networks, vms)
        return Desired(networks, images, vms, tuple(self.errors), tuple(self.empty))

    def _source(self, doc: Document) -> Source:
        return Source(self.shown(doc.file), doc.line)

    def _network(self, name: str, doc: Document, spec: NetworkSpec) -> Network:
        return Network(name=name, bridge=spec.bridge, cidr=spec.cidr, pool_size=spec.tap_pool.size,
                       pool_prefix=spec.tap_pool.prefix, source=self._source(doc), isolate_vms=spec.isolate_vms,
                       host_ports=spec.host_ports, egress=spec.egress)

    def _check_networks(self, networks: dict[str, Network]) -> None:
        seen: list[Network] = []
        for net in networks.values():
            doc = self.objects[("Network", net.name)][0]
            for other in seen:
                if net.cidr.overlaps(other.cidr):
                    self.error(doc, ("spec", "cidr"),
                               f"{net.cidr} overlaps network {other.name!r} ({other.cidr}) at {other.source}")
                if net.bridge == other.bridge:
                    self.error(doc, ("spec", "bridge"),
                               f"bridge {net.bridge!r} is also used by network {other.name!r} at {other.source}")
            seen.append(net)

    def _image(self, name: str, doc: Document, spec: ImageSpec) -> Image | None:
        base = doc.file.parent
        ok = True

        def path(field: str, value: str) -> Path:
            nonlocal ok
            p = (base / value).resolve()
            if not self.probe.is_file(p):
                self.error(doc, ("spec", field), f"{value!r} does not exist (looked at {p})")
                ok = False
            return p

        kernel = path("kernel", spec.kernel)
        initrd = path("initrd", spec.initrd) if spec.initrd else None
        rootfs = path("rootfs", spec.rootfs)
        if ok and not self.probe.is_kernel(kernel):
            self.error(doc, ("spec", "kernel"),
                       f"{spec.kernel!r} is not a Linux kernel image (neither a bzImage nor a PVH ELF)")
            ok = False
        if ok and not self.probe.is_ext4(rootfs):
            self.error(doc, ("spec", "rootfs"), f"{spec.rootfs!r} is not an ext4 image")
            ok = False
        seed = None
        if spec.work_seed is not None:
            seed = self._seed(doc, spec.work_seed, base)
            ok = ok and seed is not None
        if ok and seed is not None and seed.from_rootfs is not None and \
                not self.probe.has_dir(rootfs, seed.from_rootfs):
            self.error(doc, ("spec", "workSeed", "from"), f"{seed.from_rootfs!r} is not a directory in {spec.rootfs!r}")
            ok = False
        if not ok:
            self.invalid.add(("Image", name))
            return None
        return Image(name=name, kernel=kernel, initrd=initrd, rootfs=rootfs, seed=seed, default=spec.default,
                     source=self._source(doc))

    def _seed(self, doc: Document, spec: WorkSeedSpec, base: Path) -> WorkSeed | None:
        if spec.from_.startswith("rootfs:"):
            inner = spec.from_.removeprefix("rootfs:")
            if not inner.startswith("/"):
                self.error(doc, ("spec", "workSeed", "from"),
                           f"{spec.from_!r}: the path inside the rootfs must be absolute")
                return None
            return WorkSeed(from_rootfs=inner, from_dir=None, size=spec.size)
        directory = (base / spec.from_).resolve()
        if not self.probe.is_dir(directory):
            self.error(doc, ("spec", "workSeed", "from"), f"{spec.from_!r} is not a directory (looked at {directory})")
            return None
        return WorkSeed(from_rootfs=None, from_dir=directory, size=spec.size)

    def _default_image(self, images: dict[str, Image]) -> str | None:
        defaults = [i for i in images.values() if i.default]
        for extra in defaults[1:]:
            doc = self.objects[("Image", extra.name)][0]
            self.error(doc, ("spec", "default"),
                       f"a second default image; {defaults[0].name!r} at {defaults[0].source} is default already")
        return defaults[0].name if len(defaults) == 1 else None

    def _vm(self, name: str, doc: Document, spec: VMSpec, networks: dict[str, Network],
            images: dict[str, Image], default: str | None) -> VM | None:
        network = self._reference(doc, "network", spec.network, networks, "Network")
        image = self._reference(doc, "image", spec.image or default, images, "Image",
                                missing_ok=not images and spec.image is None)
        if spec.memory < MIN_MEMORY or spec.memory > MAX_MEMORY:
            self.error(doc, ("spec", "memory"), f"{spec.memory >> 20}Mi is out of range (64Mi to 1Ti)")
            return None
        if network is None or (image is None and (spec.image or images)):
            return None
        seed = images[image].seed if image else None
        if seed is not None and seed.size is not None and spec.disk_size < seed.size:
            self.error(doc, ("spec", "diskSize"), f"{spec.disk_size >> 20}Mi is smaller than the work seed "
                                                  f"of image {image!r} ({seed.size >> 20}Mi)")
            return None
        if spec.ip is not None:
            net = networks[network]
            if spec.ip not in net.cidr or spec.ip in (net.cidr.network_address, net.cidr.broadcast_address,
                                                      net.gateway):
                self.error(doc, ("spec", "ip"), f"{spec.ip} is not a free host address of network {network!r} "
                                                f"({net.cidr}, gateway {net.gateway})")
                return None
        return VM(name=name, network=network, image=image, disk_size=spec.disk_size, vcpus=spec.vcpus,
                  memory=spec.memory, accel=Accel(spec.accel), running=spec.running, suspended=spec.suspended,
                  ip=spec.ip, source=self._source(doc), boot=BootMode(spec.boot))

    def _reference(self, doc: Document, field: str, wanted: str | None, known: dict[str, Any],
                   kind: str, missing_ok: bool = False) -> str | None:
        if wanted is None:
            if len(known) == 1 and kind == "Network":
                return next(iter(known))
            if not missing_ok:
                hint = "there is no default image" if kind == "Image" else f"there are {len(known)} networks"
                self.error(doc, ("spec", field), f"required: {hint}")
            return None
        if wanted not in known:
            if (kind, wanted) not in self.invalid:
                self.error(doc, ("spec", field), f"{kind} {wanted!r} does not exist")
            return None
        return wanted

    def _check_capacity(self, networks: dict[str, Network], vms: dict[str, VM]) -> None:
        for net in networks.values():
            users = sum(1 for vm in vms.values() if vm.network == net.name)
            if net.pool_size + users > BRIDGE_MAX_PORTS:
                doc = self.objects[("Network", net.name)][0]
                self.error(doc, ("spec", "tapPool", "size"),
                           f"{net.pool_size} idle TAPs + {users} VMs exceed the "
                           f"{BRIDGE_MAX_PORTS} ports a bridge holds")
        taken: dict[tuple[str, IPv4Address], str] = {}
        for vm in sorted(vms.values(), key=lambda v: v.name):
            if vm.ip is None:
                continue
            if (vm.network, vm.ip) in taken:
                doc = self.objects[("VM", vm.name)][0]
                self.error(doc, ("spec", "ip"), f"{vm.ip} is already taken by VM {taken[(vm.network, vm.ip)]!r}")
            else:
                taken[(vm.network, vm.ip)] = vm.name
