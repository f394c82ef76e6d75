"""A trained checkpoint behind an HTTP endpoint, with LitServe: POST an image, get the top-k classes.

LitServe runs the model in worker processes (`workers_per_device` per GPU, or on the CPU), batches concurrent
requests (`max_batch_size`, `batch_timeout`) and answers `/health` and `/info`; this module adds what a
classifier needs around it. Preprocessing, class names and the calibration temperature come from the checkpoint,
so answers equal `python -m tl_lightning predict`'s. The command line is `python -m tl_lightning serve`.

Two things are written here rather than taken from LitServe, each for a reason:

- A bad request is answered with its own 4xx without failing the batch it shares. LitServe's batched loop answers
  every request of a batch with the error one of them raised, so `decode_request` does not raise: a bad image
  travels as a `Rejected` answer beside the others.
- `RequestGate` checks the body before it reaches the queue: a size limit (413), a content type that can carry
  an image (415) and JSON that parses (400). LitServe's own `max_payload_size` and its JSON parsing answer
  500 to the last two. It also bounds the requests in flight (`max_pending`): beyond them a request is answered
  503 with `Retry-After` at once, rather than queued until LitServe's timeout answers it (a 504 after 30 s, with
  memory growing meanwhile). A client that drops mid-upload leaves nothing queued: its body never reaches a worker.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import python_multipart  # noqa: F401  FastAPI parses uploads with it; a missing one fails at start, not as a 500 per upload
import torch
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tl_lightning.data.images import ImageDecodeError, decode_image
from tl_lightning.data.transforms import eval_transform
from tl_lightning.models.gradcam import grad_cam, overlay_png
from tl_lightning.models.module import TransferClassifier
from tl_lightning.utils import usable_cpus

HOW_TO_ASK = (
    'POST the image as a multipart file field "image" (curl -F image=@leaf.jpg) or as JSON {"image": "<base64>"}; '
    'an optional "top_k" field sets how many classes come back, and "explain": true adds a Grad-CAM map.'
)


@dataclass
class Rejected:
    """A request answered with an HTTP error of its own: `status` and the sentence that says why."""

    status: int
    message: str

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, status_code=self.status)


@dataclass
class Decoded:
    """A decoded request: the model's input tensor and how many classes to answer with."""

    tensor: torch.Tensor
    top_k: int
    explain: bool = False


class ClassifierAPI(ls.LitAPI):
    """The LitServe API of a `TransferClassifier` checkpoint; each worker loads its own copy in `setup`."""

    def __init__(self, checkpoint: str | Path, top_k: int = 5, max_batch_size: int = 1, batch_timeout: float = 0.0):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.checkpoint = str(checkpoint)
        self.default_top_k = top_k

    def setup(self, device: str) -> None:
        if device == "cpu":  # workers share the cores instead of each taking all of them
            torch.set_num_threads(max(1, usable_cpus() // int(os.environ.get("TL_SERVE_WORKERS", "1"))))
        self.model = TransferClassifier.load_from_checkpoint(self.checkpoint, map_location=device).eval()
        self.transform = eval_transform(self.model.data_config)
        self.channels = int(self.model.data_config["input_size"][0])

    # No annotations on `decode_request` / `encode_response`: LitServe hands them to FastAPI as the body's types.
    def decode_request(self, request):
        """A `Decoded` image, or a `Rejected` naming what is wrong with the request."""
        try:
            data, name, top_k, explain = _read(request)
            top_k = self.default_top_k if top_k is None else _positive_int(top_k)
            explain = _flag(explain)
        except ValueError as err:
            return Rejected(400, f"{err} {HOW_TO_ASK}")
        try:
            array = decode_image(data, name, self.channels)
        except ImageDecodeError as err:
            why = err.__cause__ or err  # the decoder's reason; the file advice of `err` does not fit a request
            return Rejected(415, f"'{name}' is not an image this model can read: {why}")
        return Decoded(self.transform(image=array)["image"], top_k, explain)

    def batch(self, inputs: list[Decoded | Rejected]) -> list[Decoded | Rejected]:
        return inputs  # stacked in `predict`, which sees which inputs are images

    @torch.no_grad()
    def predict(self, x: Decoded | Rejected | list[Decoded | Rejected]) -> Any:
        items = x if isinstance(x, list) else [x]
        images = [item for item in items if isinstance(item, Decoded)]
        if images:
            batch = torch.stack([image.tensor for image in images]).to(self.model.device)
            probabilities = iter(self.model.probabilities(batch).cpu())
        answers = [
            (item, next(probabilities), self._map(item)) if isinstance(item, Decoded) else item for item in items
        ]
        return answers if isinstance(x, list) else answers[0]

    def _map(self, image: Decoded) -> str | None:
        """The Grad-CAM map of the predicted class over the model's input, as a PNG data URL, when asked for."""
        if not image.explain:
            return None
        cam, _ = grad_cam(self.model, image.tensor[None].to(self.model.device))
        config = self.model.data_config
        png = overlay_png(image.tensor, cam[0], tuple(config["mean"]), tuple(config["std"]))
        return "data:image/png;base64," + base64.b64encode(png).decode()

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output):
        """`{"class", "probability", "top_k": [{"class", "probability"}, ...]}`, most probable first."""
        if isinstance(output, Rejected):
            return output.response()
        image, probabilities, gradcam = output
        values, indices = probabilities.topk(min(image.top_k, len(probabilities)))
        names = [self.model.class_names[i] for i in indices.tolist()]
        top = [{"class": name, "probability": p} for name, p in zip(names, values.tolist(), strict=True)]
        answer = {"class": top[0]["class"], "probability": top[0]["probability"], "top_k": top}
        return answer | ({"gradcam": gradcam} if gradcam else {})


def _read(request: Any) -> tuple[bytes, str, Any, Any]:
    """The image's bytes, its name, the requested top_k and explain, from a multipart form or a JSON body."""
    if isinstance(request, dict):  # JSON
        encoded = request.get("image")
        if not isinstance(encoded, str):
            raise ValueError('The JSON body has no "image" string.')
        try:
            data = base64.b64decode(encoded.split(",", 1)[-1], validate=True)  # a data: URL's prefix is dropped
        except (binascii.Error, ValueError) as err:
            raise ValueError(f'"image" is not base64 ({err}).') from None
        return data, str(request.get("name", "the posted image")), request.get("top_k"), request.get("explain")
    upload = request.get("image")
    if upload is None or isinstance(upload, str):  # any file field will do
        upload = next((value for value in request.values() if not isinstance(value, str)), None)
    if upload is None:
        raise ValueError("The form has no file field.")
    return upload.file.read(), upload.filename or "the uploaded image", request.get("top_k"), request.get("explain")


def _flag(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if str(value).strip().lower() in ("true", "1", "yes"):
        return True
    if str(value).strip().lower() in ("false", "0", "no", ""):
        return False
    raise ValueError(f'"explain" must be true or false, got {value!r}.')


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise ValueError(f'"top_k" must be a whole number of at least 1, got {value!r}.')
    return number


class RequestGate:
    """Checks a POST body before it is queued for a worker: size, content type, JSON syntax (see the module's
    docstring for why). The body is read here once, in chunks, and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, path: str = "/predict", max_pending: int = 0) -> None:
        self.app, self.max_bytes, self.path = app, max_bytes, path
        self.max_pending = max_pending  # 0: no bound
        self.pending = 0  # requests passed on to LitServe and not answered yet (one event loop: no lock needed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        if self.max_pending and self.pending >= self.max_pending:
            busy = f"The server is busy ({self.pending} requests in flight, at most {self.max_pending}); retry shortly."
            return await _answer(send, 503, busy, retry_after=1)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("application/json", "multipart/form-data"):
            return await _answer(send, 415, f"Content type '{kind or 'none'}' cannot carry an image. {HOW_TO_ASK}")
        if int(headers.get("content-length") or 0) > self.max_bytes:
            return await _answer(send, 413, self._too_large())
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _answer(send, 413, self._too_large())
        if kind == "application/json":
            try:
                json.loads(body)
            except ValueError as err:
                return await _answer(send, 400, f"The body is not valid JSON ({err}). {HOW_TO_ASK}")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        self.pending += 1
        try:
            return await self.app(scope, replay, send)
        finally:
            self.pending -= 1

    def _too_large(self) -> str:
        limit = f"{self.max_bytes / 2**20:.3g} MiB"
        return f"The request is larger than {limit}. Send a smaller image, or serve with a larger --max-request-mb."


async def _answer(send: Send, status: int, message: str, retry_after: int | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def server(
    checkpoint: str | Path,
    *,
    top_k: int = 5,
    max_batch_size: int = 1,
    batch_timeout: float = 0.0,
    workers_per_device: int = 1,
    accelerator: str = "auto",
    devices: int | str = "auto",
    max_request_mb: float = 20.0,
    timeout: float = 30.0,
    model_metadata: dict | None = None,
    max_pending: int = 64,
    ui: bool = False,
) -> ls.LitServer:
    """The `LitServer` for `checkpoint`; `.run(port=...)` starts it. `max_pending`: requests in flight beyond
    which new ones are answered 503 with `Retry-After` (0: no bound). `ui`: also a page for people at `/ui`
    (`page.html`), which sends photos to `/predict` and reads `/info`, so it answers what the API answers."""
    os.environ["TL_SERVE_WORKERS"] = str(workers_per_device)  # read by each worker's `setup`
    api = ClassifierAPI(checkpoint, top_k, max_batch_size, batch_timeout)
    lit = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers_per_device,
        timeout=timeout,
        model_metadata=model_metadata,
        middlewares=[(RequestGate, {"max_bytes": int(max_request_mb * 2**20), "max_pending": max_pending})],
    )
    if ui:
        page = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")
        lit.app.add_api_route("/ui", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    return lit
