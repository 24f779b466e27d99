"""Facts of the published BTSbot inputs (Rehemtulla et al. 2024, as Kowalski computes them) that every module shares."""

IMAGE_SIZE = 63
NUM_CHANNELS = 3  # science, reference (template), difference

# The 25 metadata features in the exact order the v1.0.1 model expects.
METADATA_COLUMNS = (
    "sgscore1", "distpsnr1", "sgscore2", "distpsnr2", "fwhm", "magpsf", "sigmapsf", "chipsf", "ra", "dec",
    "diffmaglim", "ndethist", "nmtchps", "age", "days_since_peak", "days_to_peak", "peakmag_so_far", "drb",
    "ncovhist", "nnotdet", "chinr", "sharpnr", "scorr", "sky", "maxmag_so_far",
)
NUM_METADATA = len(METADATA_COLUMNS)
# The 6 of them computed from the light curve (Rehemtulla et al. 2024, as Kowalski computes them); the other 19 are
# `candidate` fields.
CUSTOM_FEATURES = ("age", "days_since_peak", "days_to_peak", "peakmag_so_far", "maxmag_so_far", "nnotdet")

# The published training CSVs spell `drb` as `new_drb`; Kowalski spells `nnotdet` as `nnondet`.
COLUMN_ALIASES = {"new_drb": "drb", "nnondet": "nnotdet"}

# Value that pads cutouts smaller than 63x63 (after normalisation), at the bottom/right.
PAD_VALUE = 1e-9

REFERENCE_VERSION = "v1.0.1"
