# The digits judge: how well do class-conditional samples match scikit-learn's real 8x8 digits?
#  - Real data: the folder written by tools/data/digits.py (DATA/train/<digit>/*.png, DATA/test/<digit>/*.png).
#    Every image (real or generated) goes through the same reader: convert to grey (PIL "L"), resize to 8x8 with
#    PIL BOX (area average), map 0..255 back to 0..16 (v*16/255). So the judges see real images after the same
#    8 -> SIZE -> 8 round trip as the samples.
#  - Classifier: sklearn SVC (RBF kernel, gamma=0.001, C=1, as sklearn's "Recognizing hand-written digits" example)
#    trained on the real train split; its accuracy on the held-out real test split is printed as a sanity figure.
#    Each sample is labelled by it; per-class accuracy = fraction of samples in DIR/<k>/ labelled k.
#  - Frechet distance (FID-like): features = the 64 ReLU hidden units of an sklearn MLPClassifier (one hidden layer,
#    64 relu units, adam, random_state=0, inputs v/16) trained on the real train split. FD = |mu1-mu2|^2 +
#    Tr(C1 + C2 - 2 sqrtm(C1 C2)) (pytorch-fid's formula; the trace of the square root is taken via scipy.linalg.eigh
#    of C1^1/2 C2 C1^1/2: same value, stable for the singular covariances of dead ReLU units) between the samples
#    and the real held-out test split. Reference floor: FD(real train, real test), also with a seeded train subsample
#    of the samples' size (FD is biased upward for small sets); ceiling: FD(uniform noise images, real test).
#    The same three figures are also given in the SVC's own feature space: its 45 one-vs-one decision-function values.
# Samples: PNG files DIR/<k>/*.png where k (0..9) is the requested class (any file names, any size, RGB or grey).
# Deterministic (fixed seeds). Run:
#   /work/venv/bin/python tools/eval/digits_eval.py --samples DIR --real DATA_DIR [--json out.json]
import argparse
import glob
import json
import os
import sys

import numpy as np
from PIL import Image
from scipy import linalg
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

SEED = 0


def load_png(path):
    """A PNG -> 64 floats in 0..16 (grey, BOX-downsampled to 8x8)."""
    img = Image.open(path).convert("L")
    if img.size != (8, 8):
        img = img.resize((8, 8), Image.BOX)
    return np.asarray(img, dtype=np.float64).reshape(64) * 16.0 / 255.0


def load_class_folders(root):
    """root/<k>/*.png for integer k -> (X [n,64], y [n], paths)."""
    xs, ys, paths = [], [], []
    if not os.path.isdir(root):
        sys.exit("no such folder: %s" % root)
    for name in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, name)) or not name.isdigit():
            continue
        for p in sorted(glob.glob(os.path.join(root, name, "*.png"))):
            xs.append(load_png(p)); ys.append(int(name)); paths.append(p)
    if not xs:
        sys.exit("no PNG files in %s/<class>/" % root)
    return np.stack(xs), np.array(ys), paths


def train_classifier(X, y):
    return SVC(kernel="rbf", gamma=0.001, C=1.0, decision_function_shape="ovo").fit(X, y)


def train_feature_net(X, y):
    return MLPClassifier(hidden_layer_sizes=(64,), activation="relu", solver="adam", max_iter=1000,
                         random_state=SEED).fit(X / 16.0, y)


def features(net, X):
    """The MLP's hidden ReLU activations."""
    return np.maximum(0.0, (X / 16.0) @ net.coefs_[0] + net.intercepts_[0])


def frechet(f1, f2):
    """Frechet distance between Gaussians fitted to two feature sets: |mu1-mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)).
    Tr((C1 C2)^(1/2)) is computed as Tr((C1^(1/2) C2 C1^(1/2))^(1/2)) (same value; a symmetric PSD matrix, so
    scipy.linalg.eigh is exact and stable where sqrtm warns about the singular covariances of dead ReLU units)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_covmean = float(np.sqrt(np.clip(linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def main():
    ap = argparse.ArgumentParser(description="Judge class-conditional digit samples against sklearn's real digits.")
    ap.add_argument("--samples", required=True, help="folder of samples: DIR/<class>/*.png")
    ap.add_argument("--real", required=True, help="folder written by tools/data/digits.py")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    Xtr, ytr, _ = load_class_folders(os.path.join(args.real, "train"))
    Xte, yte, _ = load_class_folders(os.path.join(args.real, "test"))
    Xs, ys, spaths = load_class_folders(args.samples)

    svc = train_classifier(Xtr, ytr)
    test_acc = float((svc.predict(Xte) == yte).mean())
    pred = svc.predict(Xs)
    net = train_feature_net(Xtr, ytr)
    mlp_test_acc = float((net.predict(Xte / 16.0) == yte).mean())

    ftr, fte, fs = features(net, Xtr), features(net, Xte), features(net, Xs)
    fd = frechet(fs, fte)
    fd_floor = frechet(ftr, fte)
    rng = np.random.RandomState(SEED)
    n = len(Xs)
    sub = rng.choice(len(Xtr), size=min(max(n, 2), len(Xtr)), replace=False)
    fd_floor_n = frechet(ftr[sub], fte)
    noise = rng.uniform(0, 16, size=(max(n, 297), 64))
    fd_noise = frechet(features(net, noise), fte)
    gtr, gte, gs = svc.decision_function(Xtr), svc.decision_function(Xte), svc.decision_function(Xs)
    svc_fd = {"samples_vs_test": frechet(gs, gte), "train_vs_test_floor": frechet(gtr, gte),
              "train_subset_vs_test": frechet(gtr[sub], gte),
              "noise_vs_test_ceiling": frechet(svc.decision_function(noise), gte)}

    per_class = {}
    print("%-6s %7s %9s   %s" % ("class", "samples", "accuracy", "labelled as (counts of 0..9)"))
    for k in sorted(set(ys.tolist())):
        m = ys == k
        acc = float((pred[m] == k).mean())
        hist = np.bincount(pred[m], minlength=10).tolist()
        per_class[str(k)] = {"samples": int(m.sum()), "accuracy": acc, "predicted_counts": hist}
        print("%-6d %7d %8.1f%%   %s" % (k, m.sum(), 100 * acc, hist))
    overall = float((pred == ys).mean())
    mean_class = float(np.mean([v["accuracy"] for v in per_class.values()]))
    print("%-6s %7d %8.1f%%   (mean of per-class: %.1f%%, min: %.1f%%)" % (
        "all", n, 100 * overall, 100 * mean_class, 100 * min(v["accuracy"] for v in per_class.values())))
    print()
    print("classifier (SVC rbf, gamma=0.001) accuracy on real held-out test: %.1f%% (%d images)"
          % (100 * test_acc, len(yte)))
    print("feature net (MLP 64 relu) accuracy on real held-out test:         %.1f%%" % (100 * mlp_test_acc))
    print("Frechet distances in the feature net's hidden layer (64 ReLU units):")
    print("FD samples vs real test:                 %8.3f  (%d samples)" % (fd, n))
    print("FD real train vs real test (floor):      %8.3f  (%d train images)" % (fd_floor, len(Xtr)))
    print("FD real train subset vs real test:       %8.3f  (%d train images, samples' size)" % (fd_floor_n, len(sub)))
    print("FD uniform noise vs real test (ceiling): %8.3f" % fd_noise)
    print("FD in the SVC's decision-function space (45 one-vs-one scores): samples %.3f, floor %.3f, floor at the "
          "samples' size %.3f, noise %.3f" % (svc_fd["samples_vs_test"], svc_fd["train_vs_test_floor"],
                                              svc_fd["train_subset_vs_test"], svc_fd["noise_vs_test_ceiling"]))

    out = {"samples_dir": args.samples, "real_dir": args.real, "num_samples": n,
           "overall_accuracy": overall, "mean_per_class_accuracy": mean_class,
           "min_per_class_accuracy": min(v["accuracy"] for v in per_class.values()), "per_class": per_class,
           "classifier": "sklearn SVC(kernel=rbf, gamma=0.001, C=1) on real train, 8x8 BOX-downsampled, 0..16",
           "classifier_test_accuracy": test_acc, "feature_net_test_accuracy": mlp_test_acc,
           "feature_space": "hidden ReLU layer (64 units) of sklearn MLPClassifier((64,), relu, random_state=0) "
                            "on real train",
           "fd_samples_vs_test": fd, "fd_train_vs_test_floor": fd_floor, "fd_train_subset_vs_test": fd_floor_n,
           "fd_train_subset_size": int(len(sub)), "fd_noise_vs_test_ceiling": fd_noise,
           "svc_decision_space_fd": svc_fd,
           "num_real_train": int(len(Xtr)), "num_real_test": int(len(Xte))}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
