"""A Function's arguments in and its results out: the one parser and the one nesting.

Arguments, jvp tangents and vjp cotangents are all "arrays of given trailing shapes,
with optional leading batch axes that broadcast": :func:`parse` checks and converts them
(a ValueError states the expected and the given shape, a TypeError complex or
non-numeric input), :func:`flatten` lays them out as the VM's rows.  Results go back
into the traced structure by :func:`split` (values) and :func:`nest` (Jacobians: over
outputs, then arguments, as torch nests them).
"""
from __future__ import annotations

import math

import numpy as np


def shape_str(shape):
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def as_real_array(value, k, what="argument"):
    """float64 array from what the user passed; complex and non-numbers are refused."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:   # ragged lists, tensors that require grad, and the like
            raise TypeError(f"jacext: {what} {k} is not an array of real numbers: "
                            f"{exc}{_hint(value)}") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"jacext: {what} {k} is complex ({arr.dtype}); jacext computes "
                        "real Jacobians: pass the real and imaginary parts as separate "
                        "real arguments")
    if kind not in "biuf":
        raise TypeError(f"jacext: {what} {k} must be real numbers; got dtype {arr.dtype}"
                        f"{_hint(value)}")
    if arr.dtype != np.float64:
        arr = arr.astype(np.float64)
    return arr


def _hint(value):
    """What to use instead, for values a Function does not take."""
    if isinstance(value, (dict, list, tuple)):
        return ("\n  A Function takes arrays; for pytrees (dicts, lists and tuples of "
                "arrays) use jx.jacobian, jx.jacfwd, jx.jacrev or jx.grad")
    if type(value).__module__.startswith("torch"):
        return ("\n  For tensors use jacext.torch.function(F) (tensors in and out, "
                "differentiable in torch) or pass x.detach().numpy()")
    return ""


def parse(values, shapes, name, what="argument"):
    """(arrays, batch): ``values`` converted to float64 arrays, each of shape
    batch_k + shapes[k], and the broadcast batch shape of the batch_k."""
    if len(values) != len(shapes):
        hint = ""
        if len(values) == 1 and isinstance(values[0], (list, tuple)) and len(shapes) > 1:
            hint = (f"; pass them one by one, {name}(a, b, ...), not as one list or "
                    "tuple")
        raise TypeError(f"jacext: {name} was compiled for {len(shapes)} {what}(s); got "
                        f"{len(values)}{hint}")
    arrays, batches = [], []
    for k, (value, want) in enumerate(zip(values, shapes)):
        arr = as_real_array(value, k, what)
        got, nd = arr.shape, len(want)
        if len(got) < nd or tuple(got[len(got) - nd:]) != want:
            raise ValueError(
                f"jacext: {what} {k} of {name} must have shape {shape_str(want)}"
                f" (or (..., {', '.join(map(str, want))}) for a batch); got shape "
                f"{shape_str(got)}")
        arrays.append(arr)
        batches.append(tuple(got[:len(got) - nd]))
    if len(batches) == 1:
        return arrays, batches[0]
    try:
        return arrays, tuple(np.broadcast_shapes(*batches))
    except ValueError:
        raise ValueError(f"jacext: the batch shapes of the {what}s do not broadcast: "
                         + ", ".join(shape_str(s) for s in batches)) from None


def flatten(arrays, shapes, batch, parts=False):
    """The arrays as the VM's input: one C-contiguous float64 row of all their elements,
    (width,) for one point or batch + (width,) for a batch (broadcast).  ``parts``: a
    batch of several arguments, each with the whole batch's axes or none, comes back as
    the tuple of their (n, width_k) rows, or (1, width_k) for one every point shares, not
    joined (``Tape.run`` reads them side by side; ba's batch of 10^4 spent 13% of its time
    joining them)."""
    if not batch:
        if len(arrays) == 1:
            return np.ascontiguousarray(arrays[0]).reshape(-1)
        return np.concatenate([a.reshape(-1) for a in arrays])
    width = (sum(math.prod(s) for s in shapes),)
    if len(arrays) == 1 and arrays[0].shape[:len(batch)] == batch:   # its own rows
        return np.ascontiguousarray(arrays[0]).reshape(batch + width)
    # explicit widths, not -1: an empty batch (0 points) must reshape too
    n = math.prod(batch)
    if parts and n > 0 and len(arrays) <= _max_parts():
        # each argument's own rows, or one row that every point shares (an argument
        # without batch axes, or with axes of length 1: a parameter); any other broadcast
        # is joined below
        own = [a.ndim == len(batch) + len(s) and a.shape[:len(batch)] == batch
               for a, s in zip(arrays, shapes)]
        if all(o or math.prod(a.shape[:a.ndim - len(s)]) == 1
               for o, a, s in zip(own, arrays, shapes)):
            return tuple(np.ascontiguousarray(a).reshape(n if o else 1, math.prod(s))
                         for o, a, s in zip(own, arrays, shapes))
    cols = tuple(np.ascontiguousarray(np.broadcast_to(a, batch + s).reshape(n, math.prod(s)))
                 for a, s in zip(arrays, shapes))
    return joined(cols).reshape(batch + width)


def _max_parts():
    # (imported here: the C extension)
    from jacext._tape import MAX_BATCH_PARTS
    return MAX_BATCH_PARTS


def rows(x, width):
    """:func:`flatten`'s batch as the VM's rows: (n, width), or its parts as they are."""
    return x if type(x) is tuple else x.reshape(-1, width)


def joined(x):
    """:func:`flatten`'s batch as one C-contiguous (n, width) array: parts joined in one
    pass in C (``jacext._point.join_rows``: NumPy's concatenate along axis 1 copies each
    row's pieces apart, 108 us against 73 us for ba's 10^4 rows)."""
    if type(x) is not tuple:
        return x
    n = max(p.shape[0] for p in x)   # a part of one row is every point's
    x = [np.ascontiguousarray(np.broadcast_to(p, (n, p.shape[1]))) for p in x]
    if len(x) == 1:
        return x[0]
    # (imported here: _point imports this module)
    from jacext._point import join_rows
    out = np.empty((x[0].shape[0], sum(p.shape[1] for p in x)))
    join_rows(x, out)
    return out


def offsets(shapes):
    """Where each of these shapes' elements start in a flat row, and the end."""
    out = [0]
    for s in shapes:
        out.append(out[-1] + math.prod(s))
    return tuple(out)


def split(flat, shapes, is_tuple, batch):
    """Flat rows (..., total) into arrays of batch + shapes[k] (a tuple if is_tuple)."""
    if not is_tuple:
        return flat.reshape(batch + shapes[0])
    lo = offsets(shapes)
    return tuple(np.ascontiguousarray(flat[..., lo[k]:lo[k + 1]]).reshape(batch + s)
                 for k, s in enumerate(shapes))


def nest(block, out_shapes, out_is_tuple, nums, multi):
    """Jacobians nested as torch nests them: a tuple over outputs (if the function returns
    a tuple) of tuples over the arguments ``nums`` (if several were asked for);
    ``block(o, j)`` makes the block of output o and the j-th asked argument."""
    per_out = []
    for o in range(len(out_shapes)):
        per_arg = tuple(block(o, j) for j in range(len(nums)))
        per_out.append(per_arg if multi else per_arg[0])
    return tuple(per_out) if out_is_tuple else per_out[0]


def copy_into(out, result):
    """np.copyto of a (nested tuple of) result(s) into the caller's out arrays."""
    if isinstance(result, tuple):
        if not isinstance(out, tuple) or len(out) != len(result):
            raise ValueError("jacext: out must be a tuple of arrays matching the Jacobians' "
                             "nesting")
        for o, r in zip(out, result):
            copy_into(o, r)
        return
    if not isinstance(out, np.ndarray):
        raise TypeError(f"jacext: out must be a NumPy array; got {type(out).__name__}")
    if not (out.dtype == np.float64 and out.flags.writeable):
        # never a silent cast (any layout: this path copies into the caller's array)
        raise ValueError(f"jacext: out must be a writeable float64 array (np.empty(shape)); "
                         f"got {'a read-only array' if not out.flags.writeable else out.dtype}")
    if out.shape != result.shape:
        raise ValueError(f"jacext: out has shape {shape_str(out.shape)}; the Jacobian has "
                         f"shape {shape_str(result.shape)}")
    np.copyto(out, result)


def broadcast_rows(x, batch):
    """Flat C-contiguous rows (n_points, width) of rows of shape (..., width) broadcast to
    the batch shape ``batch``."""
    width = x.shape[-1]
    return np.ascontiguousarray(np.broadcast_to(x, batch + (width,))).reshape(-1, width)


def split_seeds(kind, args, arg_shapes, out_shapes, out_is_tuple, name):
    """``F.jvp(*args, tangents)`` / ``F.vjp(*args, cotangent)``'s values checked and
    split: (the function's arguments, the seeds as a tuple of arrays, their shapes)."""
    n = len(arg_shapes)
    if kind == "jvp":
        if len(args) != n + 1:
            raise TypeError(f"jacext: jvp takes the {n} argument(s) of {name} and then the "
                            f"tangents; got {len(args)} values")
        seeds = (args[-1],) if n == 1 else args[-1]
        if not isinstance(seeds, (tuple, list)) or len(seeds) != n:
            raise TypeError(f"jacext: tangents must be a tuple of {n} arrays, one per "
                            "argument")
        return args[:-1], tuple(seeds), arg_shapes
    if len(args) != n + 1:
        raise TypeError(f"jacext: vjp takes the {n} argument(s) of {name} and then the "
                        f"output cotangent; got {len(args)} values")
    seeds = tuple(args[-1]) if out_is_tuple else (args[-1],)
    if len(seeds) != len(out_shapes):
        raise TypeError(f"jacext: the cotangent must have the output's structure: "
                        f"{len(out_shapes)} array(s)")
    return args[:-1], seeds, out_shapes
