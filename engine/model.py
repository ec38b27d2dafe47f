"""The model file: an ONNX U-Net with its model card (see trainer/export.py for how it is written).

The card is JSON under the ``nucleiscreen`` key of the ONNX ``metadata_props``: how to normalize input
(``normalization``), the network's ``spatial_multiple``, its ``pixel_size_um``, the ``classes``, how to turn the class
map into nuclei (``postprocessing``), what it was trained on and how it validated. The engine reads it with
onnxruntime alone (no ``onnx`` package at run time).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nucleiscreen.errors import UserError
from nucleiscreen.kernels.normalize import Normalization

CARD_KEY = "nucleiscreen"
DEFAULT_MODEL = "unet-small.onnx"
CLASSES = ("background", "interior", "boundary")  # the network's output channels, in order


def default_model_path() -> Path:
    """The U-Net shipped inside the package (trained on the annotated CX7 frames plus simulated ones)."""
    return Path(str(resources.files("nucleiscreen") / "models" / DEFAULT_MODEL))


def shipped_models() -> dict[str, Path]:
    """The model files shipped inside the package, by name (``unet-small``, ``unet-small-int8``)."""
    folder = default_model_path().parent
    return {p.stem: p for p in sorted(folder.glob("*.onnx"))}


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    card: dict
    sha256: str

    @property
    def normalization(self) -> Normalization:
        return Normalization.from_dict(self.card["normalization"])

    @property
    def multiple(self) -> int:
        return int(self.card.get("spatial_multiple", 1))

    @property
    def input_dtype(self) -> str:
        return self.card.get("input", {}).get("dtype", "float32")

    @property
    def is_checkpoint(self) -> bool:
        """A PyTorch training checkpoint (torch backend only) rather than an ONNX file."""
        return self.path.suffix == ".pt"

    @property
    def postprocessing(self) -> dict:
        return dict(self.card.get("postprocessing", {}))


def load_model_info(path: str | Path | None = None) -> ModelInfo:
    """Read the model card of an ONNX model file (the packaged default when ``path`` is None), or make one for a
    training checkpoint (``.pt``, for the torch backend; needs the [train] extra)."""
    import onnxruntime as ort

    p = Path(path) if path is not None else default_model_path()
    if not p.is_file() and str(path).removesuffix(".onnx") in shipped_models():
        p = shipped_models()[str(path).removesuffix(".onnx")]  # a shipped model by name
    if not p.is_file():
        raise UserError(f"model file not found: {p} (shipped models: {', '.join(shipped_models())})")
    data = p.read_bytes()
    if p.suffix == ".pt":
        try:
            from nucleiscreen.network import load_checkpoint, model_card
        except ImportError as exc:
            raise UserError(f"a .pt checkpoint needs PyTorch ({exc.name} is missing): "
                            "pip install 'nucleiscreen[torch]', or export it to ONNX") from None

        _, ck = load_checkpoint(p)
        return ModelInfo(p, model_card(ck, "float32"), hashlib.sha256(data).hexdigest())
    try:
        meta = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise UserError(f"{p} is not a readable ONNX model ({type(exc).__name__})") from exc
    raw = meta.custom_metadata_map.get(CARD_KEY)
    if raw is None:
        raise UserError(f"{p} has no nucleiscreen model card: export it with `nucleiscreen export`")
    try:
        card = json.loads(raw)
    except ValueError:
        card = None
    check_card(card, p)
    return ModelInfo(p, card, hashlib.sha256(data).hexdigest())


def check_card(card, path: Path) -> None:
    """Refuse, with one line, a model card that lacks what the engine reads: the normalization, the three classes
    the post-processing expects, and well-formed optional fields."""
    def bad(what: str) -> UserError:
        return UserError(f"{path}: its model card {what}: export the model with `nucleiscreen export`")

    if not isinstance(card, dict):
        raise bad("is not a JSON object")
    if not isinstance(card.get("normalization"), dict):
        raise bad("lacks 'normalization' (how to scale the frames)")
    try:
        Normalization.from_dict(card["normalization"])
    except (TypeError, ValueError) as exc:
        raise bad(f"has an unusable 'normalization' ({exc})") from None
    if card.get("classes") != list(CLASSES):
        raise bad(f"has classes {card.get('classes')!r}; the engine needs {list(CLASSES)}")
    multiple = card.get("spatial_multiple", 1)
    if not isinstance(multiple, int) or multiple < 1:
        raise bad(f"has spatial_multiple {multiple!r}; expected a positive integer")
    px = card.get("pixel_size_um")
    if px is not None and not (isinstance(px, (int, float)) and px > 0):
        raise bad(f"has pixel_size_um {px!r}; expected a positive number or none")
    if not isinstance(card.get("postprocessing", {}), dict) or not isinstance(card.get("input", {}), dict):
        raise bad("has a 'postprocessing' or 'input' that is not a JSON object")
