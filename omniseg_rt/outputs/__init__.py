"""What a segmented slide leaves behind: pure functions over mask arrays (no engine, no slide).

- :func:`write_mask_tiff` / :func:`read_mask_tiff` / :func:`read_mask_into`: per-tissue masks as a
  pyramidal OME-TIFF (``ome_tiff``);
- :func:`mask_objects` / :func:`masks_objects`: the 8-connected objects of a mask (of several
  masks) as shapely polygons, found in bands (``polygons``);
- :func:`write_geojson`, :func:`to_level0`: objects as QuPath-ready GeoJSON in level-0 slide
  pixels (``geojson``);
- :func:`tissue_stats`, :func:`update_summary_csv`, :func:`check_summary_csv`: per-tissue counts and
  areas, and the run's summary.csv (``stats``);
- :func:`render_overlay`, :func:`downsample_mask`: a thumbnail with the tissues painted over it
  (``overlay``).

Masks may be ``np.memmap`` arrays larger than RAM: every function reads them in tiles or bands.
Files are written to a temporary name beside the target and renamed when complete.
"""

from omniseg_rt.outputs.geojson import to_level0, write_geojson
from omniseg_rt.outputs.ome_tiff import read_mask_into, read_mask_tiff, write_mask_tiff
from omniseg_rt.outputs.overlay import downsample_mask, render_overlay
from omniseg_rt.outputs.polygons import mask_objects, masks_objects
from omniseg_rt.outputs.stats import check_summary_csv, tissue_stats, update_summary_csv

__all__ = [
    "check_summary_csv",
    "downsample_mask",
    "mask_objects",
    "masks_objects",
    "read_mask_into",
    "read_mask_tiff",
    "render_overlay",
    "tissue_stats",
    "to_level0",
    "update_summary_csv",
    "write_geojson",
    "write_mask_tiff",
]
