"""Pose priors: the kinematic flow (`flow`), its pose charts (`charts`), density baselines
(`baselines`, EM in `gmm_em`) and their workdir cache (`baseline_cache`), export/load of a
trained prior (`io`), NLL tables (`evaluate`) and pictures (`pictures`)."""
