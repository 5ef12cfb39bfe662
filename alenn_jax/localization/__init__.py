"""Stage 2a, lesion localization: the difference map D (`difference`, pure functions), the
settings a map is made with (`map_settings`) and the job that maps every image of a dataset
(`localize`).
"""
