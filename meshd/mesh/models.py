"""The mesh's models as its clients see them (pure: no I/O).

mesh-llm 0.76 lists models under **public ids** (MESH_PROTOCOL_076.md §9.1): a model a host announces with
a HuggingFace identity is ``repo:<quant selector of the GGUF file>``, one with a catalog identity is its
canonical ref in display form, anything else keeps its served (internal) name; a ``#profile`` suffix is
kept. A request may name either the public id or the served name; the node rewrites a public id to the
served name before routing (§9.4). This module computes both directions from the mesh state, builds the
``GET /v1/models`` body (capabilities, ``*_status``, ``metadata``, the virtual ``mesh`` entry) and says
which served model a request's ``model`` stands for.

Inputs are bounded upstream: peers' descriptors and model lists are capped at ingest
(``meshd.protocol.peers``), the peer table by ``MeshState``, a host's own models by ``meshd.host``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from meshd.mesh.state import MeshState
from meshd.protocol.peers import CapabilityLevel, ModelCapabilities, ModelSourceKind, ServedModel

#: mesh-llm's virtual model: "let the mesh choose" (its mixture-of-agents gateway).
VIRTUAL_MODEL = "mesh"
#: mesh-llm 0.76's deprecated alias of ``mesh`` (§9.4).
AUTO_ALIAS = "auto"
#: What an answer may take beyond its prompt, when the request does not say (tokens).
DEFAULT_ANSWER_TOKENS = 256
VIRTUAL_DISPLAY_NAME = "Mesh (MoA)"
#: Markers of a quant selector in a GGUF file name, in mesh-llm's order (``quant_selector_from_gguf_file``).
_QUANT_MARKERS = ("-UD-", ".UD-", "-IQ", ".IQ", "-Q", ".Q", "-BF16", ".BF16", "-F16", ".F16", "-F32", ".F32")
_HF_URL_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/")
_STATUS = {CapabilityLevel.SUPPORTED: "supported", CapabilityLevel.LIKELY: "likely"}


# -- model refs (org/repo[@revision][:selector]) ----------------------------------------------------


@attrs.frozen
class ModelRef:
    repo: str
    revision: str | None = None
    selector: str | None = None

    def display_id(self) -> str:
        return format_model_ref(self.repo, self.revision, self.selector)


def format_model_ref(repo: str, revision: str | None, selector: str | None) -> str:
    text = repo
    if revision is not None:
        text += "@" + revision
    if selector is not None:
        text += ":" + selector
    return text


def _tail_parts(tail: str) -> tuple[str, str | None, str | None] | None:
    """``repo[@rev][:sel]`` or ``repo[:sel][@rev]`` after the ``org/``; None if a part is empty."""
    at, colon = tail.find("@"), tail.find(":")
    revision: str | None = None
    selector: str | None = None
    if at >= 0 and colon >= 0 and at < colon:
        repo, revision, selector = tail[:at], tail[at + 1 : colon], tail[colon + 1 :]
    elif at >= 0 and colon >= 0:
        repo, selector, revision = tail[:colon], tail[colon + 1 : at], tail[at + 1 :]
    elif at >= 0:
        repo, revision = tail[:at], tail[at + 1 :]
    elif colon >= 0:
        repo, selector = tail[:colon], tail[colon + 1 :]
    else:
        repo = tail
    if not repo or revision == "" or selector == "":
        return None
    return repo, revision, selector


def parse_model_ref(text: str) -> ModelRef | None:
    """A model ref as mesh-llm reads one (``org/repo``, ``org/repo:Q4_K_M``, ``org/repo@rev:Q4_K_M``, or a
    ``https://huggingface.co/org/repo[/tree/rev]`` URL); None for anything else."""
    text = text.strip()
    if not text:
        return None
    for prefix in _HF_URL_PREFIXES:
        if text.startswith(prefix):
            return _parse_hf_url(text[len(prefix) :])
    org, slash, rest = text.partition("/")
    if not slash or not org or not rest or ":" in org:
        return None
    parts = _tail_parts(rest)
    if parts is None or "/" in parts[0]:
        return None
    return ModelRef(f"{org}/{parts[0]}", parts[1], parts[2])


def _parse_hf_url(tail: str) -> ModelRef | None:
    clean = tail.split("?", 1)[0].split("#", 1)[0].strip("/")
    parts = clean.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    repo_parts = _tail_parts(parts[1])
    if repo_parts is None:
        return None
    repo = f"{parts[0]}/{repo_parts[0]}"
    if len(parts) >= 4 and parts[2] == "tree" and parts[3]:
        return ModelRef(repo, parts[3], repo_parts[2])
    if len(parts) == 2:
        return ModelRef(repo, repo_parts[1], repo_parts[2])
    return None


def _is_quant_like(value: str) -> bool:
    upper = value.upper()
    return upper.startswith(("UD-", "Q", "IQ")) or upper in ("BF16", "F16", "F32")


def _shard_prefix(stem: str) -> str | None:
    """``name`` of ``name-00001-of-00004``, else None."""
    head, sep, total = stem.rpartition("-of-")
    if not sep or len(total) != 5 or not total.isascii() or not total.isdigit():
        return None
    prefix, dash, part = head.rpartition("-")
    if not dash or len(part) != 5 or not part.isascii() or not part.isdigit():
        return None
    return prefix


def quant_selector_from_gguf_file(file: str) -> str | None:
    """The quant selector a GGUF file name carries (``Qwen3-8B-Q4_K_M.gguf`` -> ``Q4_K_M``), if any."""
    if not file.endswith(".gguf"):
        return None
    first, slash, _ = file.partition("/")
    if slash and _is_quant_like(first):
        return first
    stem = file.rsplit("/", 1)[-1][: -len(".gguf")]
    stem = _shard_prefix(stem) or stem
    for marker in _QUANT_MARKERS:
        pos = stem.rfind(marker)
        if pos >= 0:
            return stem[pos + 1 :]
    return None


def split_profile(name: str) -> tuple[str, str]:
    """``(model, profile)`` of ``model#profile`` (an empty profile is none)."""
    base, sep, profile = name.rpartition("#")
    return (base, profile) if sep else (name, "")


def public_id(name: str, descriptor: ServedModel | None) -> str:
    """The public id of a served model (§9.1), from the descriptor its host announced for it.

    Only identities that name the model without loss count (mesh-llm's ``descriptor_can_produce_lossless_id``):
    a HuggingFace one with its GGUF file (``artifact``), a catalog one with its canonical ref. Otherwise the
    served name is the public id."""
    base, profile = split_profile(name)
    ident: str | None = None
    if descriptor is not None:
        if descriptor.source_kind is ModelSourceKind.HUGGING_FACE and descriptor.artifact is not None:
            if descriptor.repository:
                artifact = descriptor.artifact
                selector = quant_selector_from_gguf_file(artifact)
                if selector is None and artifact and not artifact.endswith(".gguf"):
                    selector = artifact
                ident = format_model_ref(descriptor.repository, None, selector)
            elif descriptor.canonical_ref is not None:
                ref = parse_model_ref(descriptor.canonical_ref)
                ident = ref.display_id() if ref is not None else None
        elif descriptor.source_kind is ModelSourceKind.CATALOG and descriptor.canonical_ref is not None:
            ref = parse_model_ref(descriptor.canonical_ref)
            ident = ref.display_id() if ref is not None else None
    ident = ident or base
    found = f"{ident}#{profile}" if profile else ident
    return found if ident else name  # a name that is all profile marker ("#") stays its own id


# -- what the mesh serves -------------------------------------------------------------------------


@attrs.frozen
class LocalModel:
    """What a host's own backend says about a model it serves (``meshd.host``); None where it says nothing."""

    name: str
    context_length: int | None = None
    native_context_length: int | None = None
    embedding_size: int | None = None
    parameter_count_b: float | None = None
    vision: bool | None = None
    audio: bool | None = None
    tools: bool | None = None

    def capabilities(self) -> ModelCapabilities:
        def level(flag: bool | None) -> CapabilityLevel:
            return CapabilityLevel.SUPPORTED if flag else CapabilityLevel.NONE

        return ModelCapabilities(
            vision=level(self.vision),
            audio=level(self.audio),
            tool_use=level(self.tools),
            multimodal=bool(self.vision or self.audio),
        )


@attrs.frozen
class MeshModel:
    """One served model name, as the mesh and this node's own backend know it."""

    name: str
    public_id: str
    #: Hosts serving it: admitted mesh hosts taking requests, plus this node when its backend serves it.
    hosts: int
    descriptor: ServedModel | None = None
    #: Runtime context lengths its hosts advertise (this host's backend's included).
    contexts: tuple[int, ...] = ()
    local: LocalModel | None = None

    @property
    def context_length(self) -> int | None:
        return min(self.contexts) if self.contexts else None

    def capabilities(self) -> ModelCapabilities:
        """From the host's descriptor when it filled them in, else from this host's own backend."""
        if self.descriptor is not None and self.descriptor.capabilities_known:
            return self.descriptor.capabilities
        if self.local is not None:
            return self.local.capabilities()
        return ModelCapabilities()


def _descriptors(mesh: MeshState) -> dict[str, ServedModel]:
    """Served name -> the descriptor of the first peer (in id order) that announces one."""
    out: dict[str, ServedModel] = {}
    for _, entry in sorted(mesh.peers.items()):
        for d in entry.info.served_descriptors:
            out.setdefault(d.model_name, d)
    return out


def mesh_models(mesh: MeshState, local: Iterable[LocalModel] = ()) -> list[MeshModel]:
    """The models the mesh routes now, plus this host's own (``local``), sorted by served name."""
    routes = mesh.routable_models()
    own = {m.name: m for m in local}
    descriptors = _descriptors(mesh)
    out: list[MeshModel] = []
    for name in sorted(set(routes) | set(own)):
        hosts = routes.get(name, [])
        contexts = [
            ctx
            for pid in hosts
            if pid in mesh.peers and (ctx := mesh.peers[pid].info.context_length(name)) is not None and ctx > 0
        ]
        mine = own.get(name)
        if mine is not None and mine.context_length:
            contexts.append(mine.context_length)
        descriptor = descriptors.get(name)
        out.append(
            MeshModel(
                name=name,
                public_id=public_id(name, descriptor),
                hosts=len(hosts) + (1 if mine is not None else 0),
                descriptor=descriptor,
                contexts=tuple(contexts),
                local=mine,
            )
        )
    return out


# -- GET /v1/models -------------------------------------------------------------------------------


def _status(level: CapabilityLevel) -> str:
    return _STATUS.get(level, "none")


def _caps_fields(caps: ModelCapabilities) -> dict[str, Any]:
    vision = caps.vision is CapabilityLevel.SUPPORTED
    audio = caps.audio is CapabilityLevel.SUPPORTED
    multimodal = caps.multimodal or vision or audio
    names = ["text"]
    if multimodal:
        names.append("multimodal")
    if vision:
        names.append("vision")
    if audio:
        names.append("audio")
    if caps.reasoning in (CapabilityLevel.SUPPORTED, CapabilityLevel.LIKELY):
        names.append("reasoning")
    return {
        "capabilities": names,
        "multimodal_status": "supported" if multimodal else "none",
        "vision_status": _status(caps.vision),
        "audio_status": _status(caps.audio),
        "reasoning_status": _status(caps.reasoning),
    }


def _metadata(model: MeshModel) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    given = dict(model.descriptor.metadata) if model.descriptor is not None else {}
    for key in ("architecture", "parameter_size", "parameter_count_b", "quant"):
        if key in given:
            meta[key] = given[key]
    if model.contexts:
        meta["context_length"] = min(model.contexts)
        if max(model.contexts) != min(model.contexts):
            meta["max_context_length"] = max(model.contexts)
    for key in (
        "native_context_length",
        "tokenizer",
        "layer_count",
        "embedding_size",
        "head_count",
        "kv_head_count",
        "expert_count",
        "active_expert_count",
    ):
        if key in given:
            meta[key] = given[key]
    local = model.local
    if local is not None:  # what this host's backend says, where the descriptor said nothing
        for key, value in (
            ("parameter_count_b", local.parameter_count_b),
            ("native_context_length", local.native_context_length),
            ("embedding_size", local.embedding_size),
        ):
            if value is not None and key not in meta:
                meta[key] = value
    return meta


def _union(models: Iterable[ModelCapabilities]) -> ModelCapabilities:
    caps = list(models)
    return ModelCapabilities(
        vision=max((c.vision for c in caps), default=CapabilityLevel.NONE),
        audio=max((c.audio for c in caps), default=CapabilityLevel.NONE),
        reasoning=max((c.reasoning for c in caps), default=CapabilityLevel.NONE),
        tool_use=max((c.tool_use for c in caps), default=CapabilityLevel.NONE),
        multimodal=any(c.multimodal for c in caps),
        moe=any(c.moe for c in caps),
    )


def models_list(models: Iterable[MeshModel]) -> dict[str, Any]:
    """The body of ``GET /v1/models`` (§9.1): one entry per public id (the first served name wins), then
    the virtual ``mesh`` entry. meshd adds ``created`` (0) and ``hosts`` (hosts serving the model)."""
    data: list[dict[str, Any]] = []
    listed: list[MeshModel] = []
    seen: set[str] = set()
    for model in models:
        if model.public_id in seen:
            continue
        seen.add(model.public_id)
        listed.append(model)
        entry: dict[str, Any] = {
            "id": model.public_id,
            "display_name": model.public_id,
            "object": "model",
            "created": 0,
            "owned_by": "mesh-llm",
            **_caps_fields(model.capabilities()),
            "hosts": model.hosts,
        }
        meta = _metadata(model)
        if meta:
            entry["metadata"] = meta
        data.append(entry)
    if any(m.public_id != VIRTUAL_MODEL for m in listed) and VIRTUAL_MODEL not in seen:
        entry = {
            "id": VIRTUAL_MODEL,
            "display_name": VIRTUAL_DISPLAY_NAME,
            "object": "model",
            "created": 0,
            "owned_by": "mesh-llm",
            **_caps_fields(_union(m.capabilities() for m in listed)),
            "hosts": sum(m.hosts for m in listed),
        }
        contexts = sorted((c for m in listed if (c := m.context_length) is not None), reverse=True)
        if len(contexts) >= 2:
            entry["metadata"] = {"context_length": contexts[1]}
        data.append(entry)
    return {"object": "list", "data": data}


# -- a request's model ----------------------------------------------------------------------------


def served_name(requested: str, models: Iterable[MeshModel], request: Any = None, body_size: int = 0) -> str | None:
    """The served model a request naming ``requested`` goes to, or None when no model matches.

    A served name is itself; a public id is its first served name (§9.4, ``internal_model_for_public_id``:
    a public id without ``#profile`` also matches a profiled model with that base); ``mesh`` and ``auto``
    (unless a model is served under that name) are chosen for the request by :func:`choose_automatic`."""
    if not requested:
        return None
    listed = list(models)
    if any(m.name == requested for m in listed):
        return requested
    base, profile = split_profile(requested)
    for m in listed:
        if m.public_id == requested or (not profile and split_profile(m.public_id)[0] == base):
            return m.name
    if requested in (VIRTUAL_MODEL, AUTO_ALIAS):
        return choose_automatic(listed, request, body_size)
    return None


@attrs.frozen
class Needs:
    """What a request needs of a model: tools, image input, and about how many tokens of context."""

    tools: bool
    vision: bool
    tokens: int

    @classmethod
    def of(cls, request: Any, body_size: int) -> Needs:
        req = request if isinstance(request, dict) else {}
        answer = next(
            (
                v
                for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
                if isinstance(v := req.get(k), int)
            ),
            DEFAULT_ANSWER_TOKENS,
        )
        return cls(
            tools=bool(req.get("tools")) or bool(req.get("functions")),
            vision=_has_image(req.get("messages")) or _has_image(req.get("input")),
            tokens=body_size // 4 + max(0, answer),
        )


def _has_image(value: Any, depth: int = 0) -> bool:
    """Does a message list carry an image part (OpenAI ``image_url``/``input_image``, Anthropic ``image``)?"""
    if depth > 6:
        return False
    if isinstance(value, dict):
        if value.get("type") in ("image_url", "input_image", "image"):
            return True
        return any(_has_image(v, depth + 1) for k, v in value.items() if k in ("content", "parts"))
    if isinstance(value, list):
        return any(_has_image(v, depth + 1) for v in value[:256])
    return False


def _known_support(model: MeshModel, feature: str) -> bool | None:
    """True/False when the model's host (or this host's backend) said whether it has ``feature``, else None."""
    if model.descriptor is not None and model.descriptor.capabilities_known:
        level = getattr(model.descriptor.capabilities, feature)
        return bool(level in (CapabilityLevel.SUPPORTED, CapabilityLevel.LIKELY))
    if model.local is not None:
        flag = model.local.tools if feature == "tool_use" else model.local.vision
        return flag
    return None


def choose_automatic(models: Iterable[MeshModel], request: Any = None, body_size: int = 0) -> str | None:
    """The model ``mesh`` stands for in this request (meshd runs no mixture of agents):

    1. only models some host serves now;
    2. a model known to lack what the request needs (tools, image input) is left out, unless none is left;
    3. then, in order: known to have what it needs before unknown; a known context that fits the prompt
       (estimated at a quarter of the body's bytes, plus the answer's max tokens) before an unknown one,
       before one known to be too small; more hosts (more capacity) first; then the name.
    """
    needs = Needs.of(request, body_size)
    candidates = [m for m in models if m.hosts > 0]
    if not candidates:
        return None
    wanted = [f for f, needed in (("tool_use", needs.tools), ("vision", needs.vision)) if needed]
    able = [m for m in candidates if all(_known_support(m, f) is not False for f in wanted)]
    pool = able or candidates

    def rank(m: MeshModel) -> tuple[int, int, int, str]:
        sure = 0 if all(_known_support(m, f) is True for f in wanted) else 1
        ctx = m.context_length
        fit = 1 if ctx is None else 0 if ctx >= needs.tokens else 2
        return (sure, fit, -m.hosts, m.name)

    return min(pool, key=rank).name


def request_model(
    model: str | None, parsed: Any, body: bytes, mesh: MeshState, local: Iterable[str]
) -> tuple[str | None, bytes]:
    """A request's model as routing needs it: ``(served name, body)``. When the body names a public id (or
    ``mesh``) of a served model, the body is re-encoded with the served name in ``model``, so the host's
    backend sees a name it knows; otherwise both come back unchanged. ``model`` and ``parsed`` are what
    the proxy read from ``body``; ``local`` is this host's own served models."""
    if model is None or not isinstance(parsed, dict):
        return model, body
    local = tuple(local)
    if model in local or model in mesh.routable_models():
        return model, body  # a served name (the usual case): nothing to compute
    served = served_name(model, known_models(mesh, local), parsed, len(body))
    if served is None or served == model:
        return model, body
    rewritten = dict(parsed)
    rewritten["model"] = served
    return served, json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def known_models(mesh: MeshState, local: Iterable[str] = ()) -> list[MeshModel]:
    """Every model a peer of the table announces (routable or not, so a public id of a model that is away
    for a moment still names it), plus ``local``; sorted by served name."""
    descriptors = _descriptors(mesh)
    routes = mesh.routable_models()
    own = set(local)
    names = set(own) | set(routes)
    for entry in mesh.peers.values():
        names.update(entry.info.served_models)
    return [
        MeshModel(
            name=n,
            public_id=public_id(n, descriptors.get(n)),
            hosts=len(routes.get(n, ())) + (1 if n in own else 0),
            descriptor=descriptors.get(n),
        )
        for n in sorted(names)
        if n
    ]


def public_names(models: Iterable[MeshModel]) -> Mapping[str, str]:
    """Served name -> public id."""
    return {m.name: m.public_id for m in models}


__all__ = [
    "VIRTUAL_MODEL",
    "LocalModel",
    "MeshModel",
    "ModelRef",
    "format_model_ref",
    "known_models",
    "mesh_models",
    "models_list",
    "parse_model_ref",
    "public_id",
    "public_names",
    "quant_selector_from_gguf_file",
    "request_model",
    "served_name",
    "split_profile",
]
