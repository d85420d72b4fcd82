"""Pose priors: the kinematic flow (`flow`), its pose charts (`charts`), density baselines
(`baselines`), NLL evaluation and pictures (`evaluate`)."""
