"""Geometry: rotations (`rotations`), the one camera model (`camera`), Procrustes (`procrustes`).

The rotation and Procrustes functions are re-exported here (`geometry.axis_angle_to_matrix`,
`geometry.procrustes`); the camera lives in `flowpose.geometry.camera`.
"""

from flowpose.geometry.rotations import skew
from flowpose.geometry.rotations import axis_angle_to_matrix
from flowpose.geometry.rotations import axis_angle_to_quaternion
from flowpose.geometry.rotations import quaternion_to_axis_angle
from flowpose.geometry.rotations import quaternion_to_matrix
from flowpose.geometry.rotations import matrix_to_quaternion
from flowpose.geometry.rotations import matrix_to_axis_angle
from flowpose.geometry.rotations import rot6d_to_matrix
from flowpose.geometry.rotations import matrix_to_rot6d
from flowpose.geometry.rotations import rotation_about_axis
from flowpose.geometry.rotations import euler_to_matrix
from flowpose.geometry.rotations import matrix_to_euler
from flowpose.geometry.rotations import geodesic_angle
from flowpose.geometry.rotations import random_rotation
from flowpose.geometry.procrustes import procrustes
from flowpose.geometry.procrustes import procrustes_align
