import numpy as np

from attnseg.cli.main import main
from helpers.nifti import affine_for, write


def test_check_ok_table(brats2020, capsys):
    assert main(["data", "check", str(brats2020)]) == 0
    out = capsys.readouterr().out
    assert "BraTS2020_002" in out and "3/3 case(s) OK" in out and "32×32×32" in out


def test_check_reports_bad_file_and_exits_nonzero(brats2020, capsys):
    arr = np.ones((32, 32, 32), np.float32)
    arr[0, 0, 0] = np.nan
    write(brats2020 / "BraTS2020_001" / "BraTS2020_001_t2.nii.gz", arr, affine_for(1))
    assert main(["data", "check", str(brats2020)]) == 1
    captured = capsys.readouterr()
    assert "BraTS2020_001_t2.nii.gz: 1 NaN/inf voxel(s)" in captured.err
    assert "2/3 case(s) OK, 1 with problems" in captured.out


def test_check_missing_modality_is_one_clear_line(brats2020, capsys):
    (brats2020 / "BraTS2020_000" / "BraTS2020_000_flair.nii.gz").unlink()
    assert main(["data", "check", str(brats2020)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BraTS2020_000_flair.nii.gz" in err[0] and err[0].startswith("attnseg data: error:")
