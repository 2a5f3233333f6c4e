"""The evaluation protocol of the literature (PSNR-Y, SSIM, LPIPS, LR-PSNR, inf rate), runs over datasets,
and their reports."""
