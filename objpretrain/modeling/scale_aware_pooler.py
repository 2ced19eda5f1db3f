"""SoCo's scale-aware assignment of boxes to FPN levels (SoCo §3.3) around Detectron2's ROIPooler."""
import torch
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes


def assign_boxes_to_scale_bands(box_lists, size_thresholds):
    """The pyramid level index (0 = finest) of every box, from fixed size bands.

    A box whose size sqrt(area) is at most ``size_thresholds[0]`` goes to level 0, at most
    ``size_thresholds[1]`` to level 1, and so on; boxes larger than the last threshold go to the coarsest
    level, ``len(size_thresholds)``. With SoCo's thresholds (48, 96, 192) and P2-P5 that is
    0-48² -> P2, 48²-96² -> P3, 96²-192² -> P4, above 192² -> P5 (§3.3).

    Unlike Detectron2's ``assign_boxes_to_levels`` (log2 of the size relative to a 224 px canonical box), the
    bands are absolute pixel sizes in the view, so the same proposal shrunk in V3 moves to a finer level.

    Args:
        box_lists (list[Boxes]): boxes of each image, N_i x 4.
        size_thresholds (list[float]): increasing upper edges of the bands, in pixels.

    Returns:
        Tensor (sum N_i,) int64 of level indices.
    """
    box_sizes = torch.sqrt(torch.cat([boxes.area() for boxes in box_lists]))
    thresholds = torch.as_tensor(size_thresholds, dtype=box_sizes.dtype, device=box_sizes.device)
    # right=False: a size exactly on an edge stays in the finer band, as in the paper's "0-48², 49²-96²".
    return torch.bucketize(box_sizes, thresholds, right=False)


class ScaleAwareROIPooler(ROIPooler):
    """Detectron2's ``ROIPooler`` whose level of each box comes from :func:`assign_boxes_to_scale_bands`.

    ``forward(x, box_lists)``: x is the list of L feature maps (N, C, H_l, W_l), finest first; box_lists the
    N images' ``Boxes`` in input-image pixels. Returns (sum N_i, C, output_size, output_size).
    """

    def __init__(self, output_size, scales, sampling_ratio, pooler_type, size_thresholds):
        super().__init__(output_size, scales, sampling_ratio, pooler_type)
        size_thresholds = [float(t) for t in size_thresholds]
        if len(size_thresholds) != len(scales) - 1:
            raise ValueError(
                f"Scale-aware assignment needs one threshold fewer than pyramid levels: got {len(size_thresholds)} "
                f"thresholds (MODEL.SOCO.SCALE_AWARE_THRESHOLDS) for {len(scales)} levels (MODEL.SOCO.IN_FEATURES)"
            )
        if any(a >= b for a, b in zip(size_thresholds, size_thresholds[1:])) or size_thresholds[0] <= 0:
            raise ValueError(
                f"MODEL.SOCO.SCALE_AWARE_THRESHOLDS must be positive and increasing, got {size_thresholds}"
            )
        self.size_thresholds = size_thresholds

    def forward(self, x, box_lists):
        if len(x) != len(self.level_poolers):
            raise ValueError(f"ScaleAwareROIPooler built for {len(self.level_poolers)} levels got {len(x)} maps")
        if len(box_lists) != x[0].size(0):
            raise ValueError(f"{len(box_lists)} box lists for a batch of {x[0].size(0)} images")
        box_lists = [b if isinstance(b, Boxes) else Boxes(b) for b in box_lists]
        pooler_fmt_boxes = convert_boxes_to_pooler_format(box_lists)
        level_assignments = assign_boxes_to_scale_bands(box_lists, self.size_thresholds)
        # The boxes sorted by level: one device-to-host copy (the counts) instead of a nonzero per level. A level
        # without boxes is still pooled (zero boxes), which keeps its FPN output in the graph: DDP needs a gradient,
        # if zero, for every parameter.
        order = torch.argsort(level_assignments, stable=True)
        counts = torch.bincount(level_assignments, minlength=len(self.level_poolers)).tolist()
        pooled, start = [], 0
        for level, (pooler, count) in enumerate(zip(self.level_poolers, counts)):
            pooled.append(pooler(x[level], pooler_fmt_boxes[order[start:start + count]]))
            start += count
        pooled = torch.cat(pooled)
        # index_put_ rather than advanced indexing, as Detectron2's ROIPooler (pytorch/issues/49852).
        return pooled.new_empty(pooled.shape).index_put_((order,), pooled)
