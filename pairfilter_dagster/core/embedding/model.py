"""The model: image embeddings through Hugging Face transformers, from CLIP (the default and the parity reference
with Data-Juicer) or any image-text encoder whose model class has `get_image_features` (SigLIP, SigLIP 2, ALIGN,
...), each with its checkpoint's own `AutoImageProcessor`.

torch and transformers are imported inside `ClipEmbedder.load`, never at module level: the Dagster definitions
import this package to show the UI, and must not pay for (or require) torch to do so.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .precision import check_precision, run_dtype
from .preprocess import ImagePreparation

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_HF_CLIP = "openai/clip-vit-base-patch32"
HF_CLIP_ENV_VAR = "PAIRFILTER_HF_CLIP"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")


def default_hf_clip() -> str:
    return os.environ.get(HF_CLIP_ENV_VAR) or DEFAULT_HF_CLIP


class ModelLoadError(RuntimeError):
    """The model could not be loaded, or gives no image features; the message names the model and the ways out."""


@dataclass(frozen=True)
class ModelSpec:
    """Which checkpoint to load (`hf_clip`: the name of the setting, whatever the model family) and how to run it."""

    hf_clip: str = DEFAULT_HF_CLIP
    revision: str | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str | None = None
    """None: chosen by `precision` (`precision.run_dtype`); an explicit half dtype needs precision fast."""
    compile: bool = False
    """torch.compile the image tower (one compiled batch shape; docs/performance.md has its measured gain)."""
    precision: str = "exact"
    """exact (float32, full-size decoding, Data-Juicer's scores) or fast (`precision`)."""

    def __post_init__(self) -> None:
        if not self.hf_clip:
            raise ValueError("hf_clip: give a Hugging Face model id or a local folder")
        if self.device not in DEVICES:
            raise ValueError(f"device: must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_precision(self.precision, self.dtype)


def _load_failure(spec: ModelSpec, cause: Exception) -> ModelLoadError:
    at_revision = f" at revision {spec.revision!r}" if spec.revision else ""
    return ModelLoadError(
        f"Could not load the model {spec.hf_clip!r}{at_revision}: {type(cause).__name__}: {cause}\n"
        "Ways out: (1) point hf_clip (or the env var PAIRFILTER_HF_CLIP) at a local folder holding the "
        "checkpoint (config.json, weights, preprocessor_config.json); (2) if the model is already in the "
        "Hugging Face cache, set HF_HUB_OFFLINE=1 so no download is tried; (3) check the model id, the "
        "revision and your network access to the Hugging Face Hub."
    )


def no_image_features(spec: ModelSpec, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"hf_clip: {spec.hf_clip!r} {what}; image_pair_similarity needs an image encoder with image features, "
        "e.g. a CLIP (openai/clip-vit-base-patch32) or SigLIP (google/siglip-base-patch16-224) checkpoint"
    )


class ClipEmbedder:
    """Unit-length image embeddings (CLIP, SigLIP, any model with `get_image_features`); the cosine of two of them
    is Data-Juicer's `image_pair_similarity`."""

    def __init__(self, model: Any, image_processor: Any, spec: ModelSpec, device: str, dtype_reason: str = "") -> None:
        self.model = model
        self.image_processor = image_processor
        self.spec = spec
        self.device = device
        self.dtype = str(model.dtype).removeprefix("torch.")
        self.dtype_reason = dtype_reason
        """Why the model runs in this dtype (the precision's choice for this hardware), for the log."""
        self.preparation = ImagePreparation(image_processor, spec.precision)
        self.forward_passes = 0
        self.images_embedded = 0
        self._model_key: str | None = None
        self._image_features = model.get_image_features
        self._compiled_batch = 0
        self.dimension = self._probe_dimension()
        if spec.compile:
            import torch

            self._image_features = torch.compile(model.get_image_features, dynamic=False)

    @classmethod
    def load(cls, spec: ModelSpec) -> "ClipEmbedder":
        """Load model and image processor with `from_pretrained`, in eval mode, on the chosen device; refuse a
        checkpoint whose model gives no image features before its weights are read."""
        import torch
        from transformers import AutoConfig

        source = model_source(spec)
        device = resolve_device(spec.device)
        dtype, dtype_reason = run_dtype(spec.precision, spec.dtype, device)
        common: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
        try:
            config = AutoConfig.from_pretrained(source, **common)
            model_class = image_model_class(config, spec)
            model = model_class.from_pretrained(source, config=config, dtype=getattr(torch, dtype), **common)
            if not callable(getattr(model, "get_image_features", None)):  # remote code: known only once loaded
                raise no_image_features(spec, f"loads as {type(model).__name__}, which has no get_image_features")
            image_processor = load_image_processor(spec, source)
        except ModelLoadError:
            raise
        except Exception as exc:  # hub, network, file and config errors all come out as one clear message
            raise _load_failure(spec, exc) from exc
        model.to(device).eval()  # type: ignore[arg-type]
        return cls(model, image_processor, spec, device, dtype_reason)

    def _probe_dimension(self) -> int:
        """The length of an embedding, from a blank image (uncompiled, not counted as a forward pass): a model whose
        features are not one vector per image is refused here, before any work."""
        import torch
        from PIL import Image

        pixels = torch.from_numpy(self.preprocess(Image.new("RGB", (64, 64))))[None]
        try:
            with torch.inference_mode():
                features = image_features(self.model.get_image_features(
                    pixel_values=pixels.to(self.device, dtype=self.model.dtype)))
        except Exception as exc:  # e.g. a vision-language model that wants more than pixels
            raise no_image_features(self.spec, f"({type(self.model).__name__}) fails to embed a blank image: "
                                               f"{type(exc).__name__}: {exc}") from exc
        if features is None or features.ndim != 2:
            shape = None if features is None else tuple(features.shape)
            raise no_image_features(self.spec, f"({type(self.model).__name__}) gives image features of shape "
                                               f"{shape}, not one vector per image")
        return int(features.shape[-1])

    @property
    def model_key(self) -> str:
        """Identity of what produces the embeddings: a hash of the weights as loaded, the dtype, the precision, the
        model class and the image processor's class and settings. Two checkpoints share cached embeddings only if
        all of these agree."""
        if self._model_key is None:
            self._model_key = model_fingerprint(self.model, self.image_processor, self.dtype, self.spec.precision)
        return self._model_key

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """One image's pixel values (C, H, W); thread-safe, so worker threads can prepare batches."""
        return self.preparation.pixels(image)

    def embed_pixels(self, pixel_values: Any) -> np.ndarray:
        """One forward pass over a batch (tensor or stacked numpy array); rows are L2-normalised float32."""
        import torch

        if isinstance(pixel_values, np.ndarray):
            pixel_values = torch.from_numpy(pixel_values)
        with torch.inference_mode():
            if self.device == "cuda":
                pixel_values = pixel_values.pin_memory()
            batch = pixel_values.to(self.device, dtype=self.model.dtype, non_blocking=True)
            count = len(batch)
            if self.spec.compile:  # one compiled shape: pad a short (last) batch up to the usual size
                self._compiled_batch = max(self._compiled_batch, count)
                batch = torch.cat([batch, batch[-1:].expand(self._compiled_batch - count, *batch.shape[1:])])
            features = image_features(self._image_features(pixel_values=batch))
            features = torch.nn.functional.normalize(features[:count].float(), dim=-1)
        self.forward_passes += 1
        self.images_embedded += len(features)
        return features.cpu().numpy()

    def embed(self, images: "Sequence[Image.Image]") -> np.ndarray:
        """Preprocess and embed a few images in one forward pass (the pipeline preprocesses in worker threads)."""
        return self.embed_pixels(np.stack([self.preprocess(image) for image in images]))


def image_model_class(config: Any, spec: ModelSpec) -> Any:
    """The class to load: `CLIPModel` for CLIP, else the one `AutoModel` maps the config to, which must have
    `get_image_features` (SiglipModel, Siglip2Model, ...). Remote code (`trust_remote_code`) goes through AutoModel
    and is checked once loaded."""
    from transformers import MODEL_MAPPING, AutoModel, CLIPModel

    if getattr(config, "model_type", None) == "clip":
        return CLIPModel
    try:
        model_class: Any = MODEL_MAPPING[type(config)]
    except KeyError:
        return AutoModel
    if not callable(getattr(model_class, "get_image_features", None)):
        raise no_image_features(spec, f"is a {model_class.__name__} (model_type={config.model_type!r}), which has no "
                                      "get_image_features")
    return model_class


def image_features(output: Any) -> Any:
    """The features `get_image_features` returns: transformers 5 gives an output object whose `pooler_output` holds
    the (projected, or for SigLIP attention-pooled) features; older releases give the tensor itself."""
    import torch

    return output if isinstance(output, torch.Tensor) else getattr(output, "pooler_output", None)


def model_source(spec: ModelSpec) -> str:
    """What `from_pretrained` is given: the hub id, or the local folder (`~` expanded), which must exist."""
    if not looks_like_local_path(spec.hf_clip):
        return spec.hf_clip
    folder = str(Path(spec.hf_clip).expanduser())
    if not Path(folder).is_dir():
        raise _load_failure(spec, FileNotFoundError(f"no such folder: {folder}"))
    return folder


def load_image_processor(spec: ModelSpec, source: str | None = None) -> Any:
    """The checkpoint's own image processor (`AutoImageProcessor.from_pretrained`, same revision and
    trust_remote_code as the model)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(
        source or model_source(spec), revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )


TEXT_SIDE_WEIGHTS = ("text_model.", "text_projection.", "logit_scale", "logit_bias")
"""Weights that cannot change an image embedding (the text tower, the contrastive loss's scale and bias)."""


FAST_DECODING = "precision=fast;decode=draft+reduce;v1"
"""Hashed into the key of every fast-precision model: its reduced decoding changes the pixel values, whatever the
dtype. Change it when that decoding changes."""


def model_fingerprint(model: Any, image_processor: Any, dtype: str, precision: str = "exact") -> str:
    """sha256 over every weight but the text side's (names and bytes), the dtype, the image processor's class and
    settings, the precision unless it is exact, and the model class unless it is CLIPModel: two families or
    precisions never share embeddings, while the keys of exact CLIP caches written before other families (and the
    fast precision, and the direct preprocessing, which gives the processor's values) stay what they were."""
    import torch

    digest = hashlib.sha256()
    settings = {"class": type(image_processor).__name__, **image_processor.to_dict()}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(dtype.encode())
    if precision != "exact":
        digest.update(FAST_DECODING.encode())
    if type(model).__name__ != "CLIPModel":
        digest.update(f"model_class={type(model).__name__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(TEXT_SIDE_WEIGHTS):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def looks_like_local_path(name: str) -> bool:
    """Absolute, home-relative or ./-relative names are folders, never hub ids (`org/name`)."""
    return name.startswith(("/", "./", "../", "~")) or os.path.isabs(name)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
    return device
