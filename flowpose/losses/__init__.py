"""Losses as small pure functions; `losses.X` re-exports every public name.

  keypoints.py  gmof, keypoint_reprojection_loss, person_scale_from_keypoints
  parts.py      part_alignment_loss (semantic body-part alignment, Zanfir et al. 2020),
                sample_part_pixels, soft_visibility_from_normals
  part_groups.py group_by_label, grouped_part_alignment_loss (= part_alignment_loss on points
                grouped by part: one [P, Mp, Mv] distance tensor; what the fitter uses)
  silhouette.py silhouette_loss (the part alignment with one part: the person mask),
                sample_mask_pixels
  priors.py     latent_prior, shape_prior, neg_log_prob_prior
  compose.py    weighted_sum (one weights dict for every term; used by the trainer and fitting)
"""

# pylint: disable=unused-import
from flowpose.losses.compose import weighted_sum
from flowpose.losses.keypoints import gmof
from flowpose.losses.keypoints import keypoint_reprojection_loss
from flowpose.losses.keypoints import person_scale_from_keypoints
from flowpose.losses.part_groups import group_by_label
from flowpose.losses.part_groups import grouped_part_alignment_loss
from flowpose.losses.parts import part_alignment_loss
from flowpose.losses.parts import sample_part_pixels
from flowpose.losses.parts import soft_visibility_from_normals
from flowpose.losses.priors import latent_prior
from flowpose.losses.priors import neg_log_prob_prior
from flowpose.losses.priors import shape_prior
from flowpose.losses.silhouette import sample_mask_pixels
from flowpose.losses.silhouette import silhouette_loss
