"""The paper's published tables (Zhang & Hu 2021, MURA elbow), shown beside ours in report.md.

Table 2's check marks are lost in the text's layout; the text's "increase the accuracy by about
1.67% on average" fits LE in the second row of each backbone's pair (the four gains average
1.665 points), which is how the rows are read here.
"""

# Table 1: PSNR (dB), SSIM of the repainted normal ("negative") and abnormal ("positive") images.
TABLE1 = (
  {"images": "normal", "PSNR": 34.7566, "SSIM": 0.9708},
  {"images": "abnormal", "PSNR": 34.6099, "SSIM": 0.9657},
)

# Table 2, in percent: accuracy, precision, recall, F1, kappa per backbone, without and with LE.
TABLE2_COLUMNS = ("Accuracy", "Precision", "Recall", "F1", "Kappa")
TABLE2 = {
  "VGG-19": ((82.8, 76.82, 94.47, 84.73, 65.5), (85.59, 81.11, 93.19, 86.73, 71.13)),
  "ResNet-50": ((81.72, 77.78, 89.36, 83.17, 63.38), (83.23, 78.97, 91.06, 84.59, 66.39)),
  "DenseNet-121": ((81.51, 78.54, 87.23, 82.66, 62.96), (83.01, 82.77, 83.83, 83.3, 66.01)),
  "Inception-v3": ((82.15, 78.36, 89.36, 83.5, 64.24), (83.01, 78.68, 91.06, 84.42, 65.96)),
}


def table2_rows() -> list[dict]:
  """The paper's Table 2 as rows in the layout of ours (fractions, not percent)."""
  rows = []
  for backbone, pair in TABLE2.items():
    for with_le, values in zip(("no", "yes"), pair, strict=True):
      row = {"Backbone": backbone, "With LE": with_le}
      row.update({c: f"{v / 100:.4f}" for c, v in zip(TABLE2_COLUMNS, values, strict=True)})
      rows.append(row)
  return rows
