"""The numpy rasterizer's public API in one place (pictures, part maps, visibility).

Not differentiable: plain numpy, for visualisation, evaluation and visibility masks that are
computed once and then held fixed (e.g. by a part-alignment loss). One idea per module:

  views.py       PinholeCamera, as_pinhole, look_at, fit_camera, project (the projection itself is
                 `flowpose.geometry.camera.perspective_project_np`, the one pinhole formula)
  zbuffer.py     rasterize -> Rasterization (depth, face index, barycentrics), face_labels,
                 label_image
  shading.py     face/vertex normals, Lambertian `shade`, `render` -> Rendering (+ part labels)
  visibility.py  vertex_visibility (z-buffer test per vertex)

    from flowpose.evidence import raster
    cam = raster.fit_camera(vertices, view_dir=(0, 0, 1), image_size=(512, 512))
    image = raster.render(vertices, faces, cam, (512, 512), vertex_labels=labels).rgb
"""

# pylint: disable=unused-import
from flowpose.evidence.shading import Rendering
from flowpose.evidence.shading import face_normals
from flowpose.evidence.shading import render
from flowpose.evidence.shading import shade
from flowpose.evidence.shading import vertex_normals
from flowpose.evidence.views import PinholeCamera
from flowpose.evidence.views import as_pinhole
from flowpose.evidence.views import fit_camera
from flowpose.evidence.views import look_at
from flowpose.evidence.views import project
from flowpose.evidence.views import to_camera
from flowpose.evidence.visibility import vertex_visibility
from flowpose.evidence.zbuffer import Rasterization
from flowpose.evidence.zbuffer import face_labels
from flowpose.evidence.zbuffer import label_image
from flowpose.evidence.zbuffer import rasterize
