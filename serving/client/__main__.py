"""``python -m serving.client``: classify digit images (or MNIST test images) with a server.

Examples::

    python -m serving.client digit.png another.jpg
    python -m serving.client --mnist 0 1 2 --model standard --protocol rest
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from serving.client import ClientError, ServingClient


class ImageError(ValueError):
    """A file that is not a readable image."""


def load_digit(path: Path) -> np.ndarray:
    """An image file as an MNIST-like float32 [28,28,1] in [0,1].

    Grayscale; fitted into 28x28 keeping its aspect ratio (centred on black); inverted when the
    digit is dark on a light background, since MNIST digits are light on black.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            gray = ImageOps.grayscale(opened)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path} is not an image Pillow can read ({exc})") from exc
    pixels = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        gray = ImageOps.invert(gray)
    fitted = ImageOps.contain(gray, (28, 28))
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(fitted, ((28 - fitted.width) // 2, (28 - fitted.height) // 2))
    return (np.asarray(canvas, dtype=np.float32) / 255.0)[..., np.newaxis]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(
        prog="python -m serving.client", description=__doc__.splitlines()[0]
    )
    p.add_argument("images", nargs="*", type=Path, help="PNG/JPEG files of digits")
    p.add_argument("--mnist", nargs="+", type=int, default=[], help="MNIST test-set indices")
    p.add_argument("--target", default=None, help="host:port (default localhost:8500 / :8501)")
    p.add_argument("--protocol", choices=["grpc", "rest"], default="grpc")
    p.add_argument("--model", default="separable")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--label", default=None)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = p.parse_args(argv)
    if not args.images and not args.mnist:
        p.error("give image files and/or --mnist indices")
    if args.version is not None and args.label is not None:
        p.error("--version and --label are exclusive")
    return args


class _CliError(Exception):
    """A one-line ``error: ...`` for stderr; the command then exits with 1."""


_Named = tuple[str, np.ndarray, int | None]


def main(argv: list[str] | None = None) -> int:
    """Classify each input and print class, probability and latency."""
    args = parse_args(argv)
    try:
        named: list[_Named] = [(str(path), _load_file(path), None) for path in args.images]
        if args.mnist:
            named.extend(_mnist_digits(args.mnist))
        _classify(args, named)
    except _CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _load_file(path: Path) -> np.ndarray:
    try:
        return load_digit(path)
    except ImageError as exc:
        raise _CliError(str(exc)) from exc


def _mnist_digits(indices: list[int]) -> list[_Named]:
    """The MNIST test images at ``indices``, each with its label."""
    from mnist_data import DataError, load_mnist

    try:
        mnist = load_mnist()
    except DataError as exc:
        raise _CliError(str(exc)) from exc
    named: list[_Named] = []
    for index in indices:
        if not 0 <= index < len(mnist.x_test):
            raise _CliError(f"MNIST test index {index} outside 0..{len(mnist.x_test) - 1}")
        image = (mnist.x_test[index].astype(np.float32) / 255.0)[..., np.newaxis]
        named.append((f"mnist[{index}]", image, int(mnist.y_test[index])))
    return named


def _classify(args: argparse.Namespace, named: list[_Named]) -> None:
    """Send each image to the server and print its class; stops at the first failure."""
    target = args.target or ("localhost:8500" if args.protocol == "grpc" else "localhost:8501")
    with ServingClient(target, args.protocol, timeout_s=args.timeout) as client:
        for name, image, label in named:
            try:
                result = client.predict(
                    args.model, image[np.newaxis], version=args.version, label=args.label
                )
            except ClientError as exc:
                if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise _CliError(f"cannot reach the server at {target} ({exc.message})") from exc
                raise _CliError(f"{name}: {exc}") from exc
            except OSError as exc:
                raise _CliError(f"cannot reach the server at {target} ({exc})") from exc
            digit = int(result.classes[0])
            probability = float(result.probabilities[0][digit])
            expected = (
                "" if label is None else f"  (label {label}{'' if label == digit else ', WRONG'})"
            )
            print(
                f"{name}: {digit}  p={probability:.4f}  {result.latency_s * 1e3:.2f} ms  "
                f"[{args.model} v{result.version or '?'} via {args.protocol}]{expected}"
            )


if __name__ == "__main__":
    sys.exit(main())
