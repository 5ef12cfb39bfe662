"""Reports written into a workdir's `report/`: localization scores and Figure 3 (stage 2a),
Table 2, its LE effect and Figure 4 (stage 2b), and the pipeline's report.md.
"""
