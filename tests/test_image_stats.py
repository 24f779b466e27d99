"""Difference-stamp statistics (btsbot_jax.sim.image_stats) and the image-derived simulated drb: each statistic
separates the shapes it is meant to (clean PSF, dipole, cosmic ray, noise), and real packets' negative
subtractions carry a positive blob, as the simulator now renders them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, ZTF_ALERTS, require

from btsbot_jax.sim import image_stats as ist
from btsbot_jax.sim import render

FWHM = 2.2


def _noise(seed=0, sigma=5.0):
    return np.random.default_rng(seed).normal(0, sigma, (63, 63))


def _point(flux=3000.0, fwhm=FWHM, seed=0):
    img = _noise(seed)
    render.add_point(img, 31.2, 30.8, flux, fwhm)
    return img


def _dipole(flux=3000.0, seed=0):
    img = _noise(seed)
    render.add_point(img, 30.0, 31.0, flux, FWHM)
    render.add_point(img, 32.0, 31.0, -flux, FWHM)
    return img


def _cosmic(flux=3000.0, seed=0):
    img = _noise(seed)
    render.add_sharp(img, 31.0, 31.0, flux, 0.3)
    return img


def test_noise_sigma_is_the_pixel_rms():
    assert ist.noise_sigma(_noise(1, 7.0)) == pytest.approx(7.0, rel=0.05)
    img = _noise(2, 3.0)
    img[:5] = np.nan  # masked rows are ignored
    assert ist.noise_sigma(img) == pytest.approx(3.0, rel=0.06)


def test_a_clean_point_source_looks_like_one():
    st = ist.difference_stats(_point(), FWHM)
    assert st["psf_correlation"] > 0.95
    assert st["negative_fraction"] < 0.05  # the noise in the r = 5 px disc only
    assert 0.1 < st["peak_to_sum"] < 0.25  # the 5x5 box holds most of a 2.2 px PSF, spread over ~9 pixels
    assert 0.2 < st["sharpness"] < 2.0
    assert st["peak_snr"] > 50
    assert ist.realness_statistic(_point(), FWHM) > 6  # the drb logit of a clean source: drb > 0.997


def test_a_dipole_is_half_negative_and_scores_low():
    st = ist.difference_stats(_dipole(), FWHM)
    assert 0.4 < st["negative_fraction"] < 0.6
    assert ist.realness_statistic(_dipole(), FWHM) < 0


def test_a_cosmic_ray_is_far_sharper_than_the_psf():
    st, ps = ist.difference_stats(_cosmic(), FWHM), ist.difference_stats(_point(), FWHM)
    assert st["peak_to_sum"] > 0.6 > ps["peak_to_sum"]
    assert st["sharpness"] > 5 * ps["sharpness"]
    assert ist.realness_statistic(_cosmic(), FWHM) < 0


def test_statistics_are_scale_free_and_handle_masks_and_cut_stamps():
    a, b = _point(), _point() * 37.0
    for k in ("negative_fraction", "peak_to_sum", "sharpness", "psf_correlation", "peak_snr"):
        assert ist.difference_stats(a)[k] == pytest.approx(ist.difference_stats(b)[k], rel=1e-9)
    masked = _point()
    masked[:, 40:] = np.nan
    assert ist.difference_stats(masked)["psf_correlation"] > 0.9
    cut = _point()[:, :40]  # a stamp cut at the CCD edge: finite, no crash
    assert all(np.isfinite(v) for v in ist.difference_stats(cut).values())
    assert ist.negative_fraction(np.full((63, 63), np.nan)) == 0.5


def test_drb_logit_orders_the_shapes_as_a_real_bogus_model():
    z = {name: ist.drb_logit(ist.difference_stats(img, FWHM))
         for name, img in (("point", _point()), ("faint", _point(150.0)), ("dipole", _dipole()),
                           ("cosmic", _cosmic()))}
    assert z["point"] > 6  # drb > 0.997
    assert z["faint"] > 2  # a faint source is still real, less certain
    assert z["dipole"] < 0 and z["cosmic"] < 0
    assert z["point"] > z["faint"] > max(z["dipole"], z["cosmic"])


@pytest.mark.slow
def test_real_negative_subtractions_carry_a_positive_blob_and_drb_follows_the_image():
    """ZTF cuts the difference stamp of an isdiffpos='f' candidate from the inverted difference: in the real
    packets its centre is positive, as for 't'; and the real drb is lower where the stamp looks bogus."""
    require(ZTF_ALERTS)
    from btsbot_jax.sim import compare

    real = compare.real_image_stats(DATA)
    for sign in ("t", "f"):
        sub = real[real["isdiffpos"] == sign]
        assert len(sub) > 50
        assert sub["peak_snr"].median() > 5
        assert sub["negative_fraction"].median() < 0.3
    agree = compare.drb_image_agreement(real)
    assert agree["spearman"] > 0.4 and agree["auc_drb_above_0.5"] > 0.75
