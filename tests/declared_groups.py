"""The built-in families' channel groups written by hand: the oracle that automatic slicing
must reproduce exactly (groups, their widths and order, every parameter's axes in order)."""

from raysim.models.preresnet import BLOCKS_PER_STAGE


def norm_axes(norm, group):
    """Axes of a norm layer's parameters (relative names)."""
    return {} if norm == "none" else {"weight": (group,), "bias": (group,)}


def cnn_groups(widths, hidden, norm):
    groups = {f"conv{i}": w for i, w in enumerate(widths)}
    groups["hidden"] = hidden
    axes, idx, prev = {}, 0, None
    for i in range(len(widths)):
        g = f"conv{i}"
        axes[f"features.{idx}.weight"] = (g, prev, None, None)
        axes[f"features.{idx}.bias"] = (g,)
        for k, v in norm_axes(norm, g).items():
            axes[f"features.{idx + 2}.{k}"] = v
        idx += 4 + (1 if i < len(widths) - 1 else 0)  # conv, scaler, norm, relu (, pool)
        prev = g
    axes["hidden.weight"] = ("hidden", prev)
    axes["hidden.bias"] = ("hidden",)
    axes["classifier.weight"] = (None, "hidden")
    axes["classifier.bias"] = (None,)
    return groups, axes


def mlp_groups(widths):
    groups = {f"fc{i}": w for i, w in enumerate(widths)}
    axes, prev = {}, None
    for i in range(len(widths)):
        axes[f"layers.{i}.weight"] = (f"fc{i}", prev)
        axes[f"layers.{i}.bias"] = (f"fc{i}",)
        prev = f"fc{i}"
    axes["classifier.weight"] = (None, prev)
    axes["classifier.bias"] = (None,)
    return groups, axes


def preresnet_groups(widths, norm):
    res = [f"res{s}" for s in range(len(BLOCKS_PER_STAGE))]
    inner = [[f"s{s}b{b}" for b in range(n)] for s, n in enumerate(BLOCKS_PER_STAGE)]
    groups = dict(zip(res, widths))
    for s, names in enumerate(inner):
        groups.update({g: widths[s] for g in names})
    axes = {"stem.weight": (res[0], None, None, None)}
    i, prev = 0, res[0]
    for s, names in enumerate(inner):
        for b, g in enumerate(names):
            p = f"blocks.{i}"
            axes.update({f"{p}.n1.{k}": v for k, v in norm_axes(norm, prev).items()})
            axes[f"{p}.conv1.weight"] = (g, prev, None, None)
            axes.update({f"{p}.n2.{k}": v for k, v in norm_axes(norm, g).items()})
            axes[f"{p}.conv2.weight"] = (res[s], g, None, None)
            if b == 0 and s > 0:
                axes[f"{p}.shortcut.weight"] = (res[s], prev, None, None)
            prev = res[s]
            i += 1
    axes.update({f"norm.{k}": v for k, v in norm_axes(norm, prev).items()})
    axes["classifier.weight"] = (None, prev)
    axes["classifier.bias"] = (None,)
    return groups, axes
