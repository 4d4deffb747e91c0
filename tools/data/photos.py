# Prepares the natural photographs that ship inside the scikit-image wheel (skimage/data/*.png|jpg, read with
# skimage.data.*; no network) for `ldm train autoencoder`: random training crops from some photos, whole held-out
# photos for evaluation. The split is BY PHOTO: no pixel of a held-out photo is in the training folder.
#  - Colour photographs: astronaut, coffee, chelsea (the cat), rocket, motorcycle (the left and right views of
#    skimage's stereo pair are one scene, so one split unit), immunohistochemistry, hubble_deep_field, retina.
#    Left out: colorwheel, logo, chessboard (synthetic), lfw_subset (25x25 faces), and everything the wheel does
#    not contain (kidney, lily, skin, eagle, ... need a download).
#  - --sklearn: also scikit-learn's two sample photographs (sklearn/datasets/images/china.jpg, a temple, and
#    flower.jpg, 640x427 each; read with sklearn.datasets.load_sample_image, no network) as training units: two more
#    everyday colour scenes.
#  - Greyscale photographs (training only, grey replicated to RGB, --no-grey drops them): camera, moon, coins,
#    grass, gravel, brick. They add texture; the held-out photos are all colour.
#  - Held out (HELDOUT): astronaut, chelsea, coffee: written whole to DIR/heldout/<name>.png, centre-cropped to
#    multiples of 8 (chelsea 300x451 -> 296x448; astronaut 512x512 and coffee 400x600 unchanged).
#  - Training crops: DIR/train/<photo>-NNNN.png, SIZE x SIZE RGB. For each crop: a scale drawn from SCALES (the photo
#    is downsampled by that factor with PIL bicubic first; scales that would make the short side smaller than SIZE
#    are skipped), a uniformly random position, a horizontal flip with probability 1/2. Crops whose pixel standard
#    deviation is below FLAT_STD (black sky of hubble, black border of retina) are redrawn (up to 50 tries).
#    --per-photo crops per colour scene (split evenly over the two motorcycle views), half as many per grey photo
#    unless --grey-per-photo says otherwise (e.g. per_photo / 8: the grey crops at about 10% of the whole).
#  - --jitter P: with probability P a colour crop gets a random colour change (torchvision ColorJitter-like, applied
#    in this order): brightness x U(1-B, 1+B), saturation x U(1-S, 1+S) (blend with the crop's luma), hue shifted by
#    U(-H, H) of a turn (HSV), with (B, S, H) = --jitter-range (default 0.2 0.3 0.05). Grey crops are not jittered.
#  - --colour-fields N: also N generated SIZE x SIZE crops of pure colour content (DIR/train/colourfield-NNNN.png),
#    drawn from their own generator (numpy default_rng(seed + 1000), so the photo crops stay exactly as without the
#    flag): a third each of flat fields, linear gradients between two colours at a random angle, and 1-4 rectangles
#    or ellipses of other colours on a field. Colours: hue U(0, 1), saturation sqrt(U(0, 1)) (mostly saturated),
#    value U(0.15, 1) in HSV; one in ten is a grey. They cover every hue at full saturation, which the photos do not.
#  - DIR/split.json records the photos of each split, image sizes, and the parameters.
#  - --fixture FILE: also write FIXTURE_BOX of the held-out astronaut (96x96: the face) to FILE, the crop that
#    Tests/PipelinesTests/ShippedModelsTests.swift reconstructs through models/photo-vae.
# Deterministic: numpy.random.default_rng(--seed); the same files on every run.
# Run: /work/venv/bin/python tools/data/photos.py --out DIR [--size 64] [--per-photo 600] [--seed 0] [--no-grey]
#      [--sklearn] [--grey-per-photo N] [--jitter P [--jitter-range B S H]] [--colour-fields N]
#      [--fixture Tests/PipelinesTests/Fixtures/photos/astronaut-96.png]
#  Without the new flags the output is byte for byte what it was (the first models/photo-vae's data).
import argparse
import json
import os

import numpy as np
import skimage
import skimage.data as sd
from PIL import Image
from skimage.color import hsv2rgb, rgb2hsv

# Split unit -> list of (file stem, loader). A unit with several views is split as a whole.
COLOUR = {
    "astronaut": [("astronaut", sd.astronaut)],
    "chelsea": [("chelsea", sd.chelsea)],
    "coffee": [("coffee", sd.coffee)],
    "rocket": [("rocket", sd.rocket)],
    "motorcycle": [("motorcycle_left", lambda: sd.stereo_motorcycle()[0]),
                   ("motorcycle_right", lambda: sd.stereo_motorcycle()[1])],
    "immunohistochemistry": [("immunohistochemistry", sd.immunohistochemistry)],
    "hubble_deep_field": [("hubble_deep_field", sd.hubble_deep_field)],
    "retina": [("retina", sd.retina)],
}
SKLEARN = {
    "china": [("china", lambda: __import__("sklearn.datasets", fromlist=["x"]).load_sample_image("china.jpg"))],
    "flower": [("flower", lambda: __import__("sklearn.datasets", fromlist=["x"]).load_sample_image("flower.jpg"))],
}
GREY = {name: [(name, getattr(sd, name))] for name in ["camera", "moon", "coins", "grass", "gravel", "brick"]}
HELDOUT = ["astronaut", "chelsea", "coffee"]
SCALES = [1.0, 1.0, 1.5, 2.0, 3.0]  # 1.0 twice: full resolution (what the evaluation sees) is drawn 40% of the time
FLAT_STD = 4.0
FIXTURE_BOX = (176, 64, 96, 96)  # left, top, width, height in astronaut.png
SEED = 0


def rgb(a):
    """uint8 HxW or HxWx3/4 -> HxWx3 uint8."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3]).astype(np.uint8)


def centre_crop(a, multiple):
    h, w = a.shape[:2]
    H, W = h // multiple * multiple, w // multiple * multiple
    t, l = (h - H) // 2, (w - W) // 2
    return a[t:t + H, l:l + W]


def jitter(c, rng, ranges):
    """A random brightness / saturation / hue change of the uint8 HxWx3 crop `c` (ColorJitter-like)."""
    b, s, h = ranges
    x = c.astype(np.float64) / 255.0
    x = np.clip(x * rng.uniform(1 - b, 1 + b), 0, 1)
    luma = (x @ np.array([0.299, 0.587, 0.114]))[:, :, None]
    x = np.clip(luma + (x - luma) * rng.uniform(1 - s, 1 + s), 0, 1)
    hsv = rgb2hsv(x)
    hsv[:, :, 0] = (hsv[:, :, 0] + rng.uniform(-h, h)) % 1.0
    return np.round(hsv2rgb(hsv) * 255).astype(np.uint8)


def random_colour(rng):
    """One RGB colour (float 0-1): HSV with hue U(0, 1), saturation sqrt(U(0, 1)), value U(0.15, 1); 10% greys."""
    if rng.random() < 0.1:
        return np.full(3, rng.uniform(0.0, 1.0))
    hsv = np.array([[[rng.uniform(0, 1), np.sqrt(rng.uniform(0, 1)), rng.uniform(0.15, 1.0)]]])
    return hsv2rgb(hsv)[0, 0]


def colour_field(size, rng):
    """A SIZE x SIZE uint8 crop of pure colour content: a flat field, a two-colour gradient or shapes on a field."""
    kind = rng.integers(3)
    x = np.empty((size, size, 3))
    x[:] = random_colour(rng)
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        t = np.clip(xx * np.cos(angle) + yy * np.sin(angle) + 0.5, 0, 1)[:, :, None]
        x = (1 - t) * x + t * random_colour(rng)
    elif kind == 2:
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 10, size / 2, 2)
            if rng.random() < 0.5:
                m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            else:
                m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            x[m] = random_colour(rng)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def crops(photo, count, size, rng):
    """`count` random SIZE x SIZE crops of `photo` (uint8 HxWx3) at random scales, with random flips."""
    h, w = photo.shape[:2]
    pyramid = {}
    for s in sorted(set(SCALES)):
        H, W = round(h / s), round(w / s)
        if min(H, W) >= size:
            pyramid[s] = photo if s == 1.0 else np.asarray(Image.fromarray(photo).resize((W, H), Image.BICUBIC))
    scales = [s for s in SCALES if s in pyramid]
    out = []
    for _ in range(count):
        for _ in range(50):
            img = pyramid[scales[rng.integers(len(scales))]]
            t = rng.integers(img.shape[0] - size + 1)
            l = rng.integers(img.shape[1] - size + 1)
            c = img[t:t + size, l:l + size]
            flip = rng.random() < 0.5
            if c.std() >= FLAT_STD:
                break
        out.append(c[:, ::-1] if flip else c)
    return out


def main():
    ap = argparse.ArgumentParser(description="Write skimage's photographs as training crops + held-out whole photos.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    ap.add_argument("--per-photo", type=int, default=600, help="crops per colour photo (default 600; grey: half)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-grey", action="store_true", help="leave out the greyscale photographs")
    ap.add_argument("--sklearn", action="store_true", help="also train on scikit-learn's china.jpg and flower.jpg")
    ap.add_argument("--grey-per-photo", type=int, help="crops per grey photo (default: per-photo / 2)")
    ap.add_argument("--jitter", type=float, default=0.0, help="probability of a colour jitter per colour crop")
    ap.add_argument("--jitter-range", type=float, nargs=3, default=[0.2, 0.3, 0.05], metavar=("B", "S", "H"))
    ap.add_argument("--colour-fields", type=int, default=0,
                    help="also write N generated crops of flat fields, gradients and shapes in saturated colours")
    ap.add_argument("--fixture", help="also write the 96x96 held-out test crop of astronaut here")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    train_dir, held_dir = os.path.join(args.out, "train"), os.path.join(args.out, "heldout")
    os.makedirs(train_dir, exist_ok=True)
    os.makedirs(held_dir, exist_ok=True)
    split = {"source": "skimage.data (scikit-image %s wheel)" % skimage.__version__, "seed": args.seed,
             "size": args.size, "per_photo": args.per_photo, "scales": SCALES, "flat_std": FLAT_STD,
             "heldout": {}, "train": {}}
    for unit in HELDOUT:
        for stem, load in COLOUR[unit]:
            a = centre_crop(rgb(load()), 8)
            Image.fromarray(a).save(os.path.join(held_dir, stem + ".png"))
            split["heldout"][stem] = list(a.shape[:2])
    if args.fixture:
        l, t, w, h = FIXTURE_BOX
        os.makedirs(os.path.dirname(os.path.abspath(args.fixture)), exist_ok=True)
        Image.fromarray(np.ascontiguousarray(rgb(sd.astronaut())[t:t + h, l:l + w])).save(args.fixture)
    colour = dict(COLOUR, **(SKLEARN if args.sklearn else {}))
    units = [(u, v, args.per_photo) for u, v in colour.items() if u not in HELDOUT]
    if not args.no_grey:
        grey_count = args.per_photo // 2 if args.grey_per_photo is None else args.grey_per_photo
        units += [(u, v, grey_count) for u, v in GREY.items()]
    if args.sklearn or args.grey_per_photo is not None or args.jitter > 0:
        split.update(sklearn=args.sklearn, grey_per_photo=grey_count if not args.no_grey else 0,
                     jitter=args.jitter, jitter_range=args.jitter_range)
    total = 0
    for unit, views, count in units:
        for k, (stem, load) in enumerate(views):
            n = count // len(views) + (1 if k < count % len(views) else 0)
            photo = rgb(load())
            for i, c in enumerate(crops(photo, n, args.size, rng)):
                if args.jitter > 0 and unit not in GREY and rng.random() < args.jitter:
                    c = jitter(np.ascontiguousarray(c), rng, args.jitter_range)
                Image.fromarray(np.ascontiguousarray(c)).save(os.path.join(train_dir, "%s-%04d.png" % (stem, i)))
            split["train"][stem] = {"size": list(photo.shape[:2]), "crops": n}
            total += n
    if args.colour_fields > 0:
        field_rng = np.random.default_rng(args.seed + 1000)
        for i in range(args.colour_fields):
            Image.fromarray(colour_field(args.size, field_rng)).save(
                os.path.join(train_dir, "colourfield-%04d.png" % i))
        split["colour_fields"] = args.colour_fields
        total += args.colour_fields
    with open(os.path.join(args.out, "split.json"), "w") as f:
        json.dump(split, f, indent=1)
    print("wrote %d training crops (%dx%d) from %d photos to %s" % (total, args.size, args.size, len(split["train"]), train_dir))
    print("held out (whole):", ", ".join("%s %dx%d" % (k, v[1], v[0]) for k, v in split["heldout"].items()))


if __name__ == "__main__":
    main()
