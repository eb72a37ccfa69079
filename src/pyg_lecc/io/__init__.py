r"""File helpers shared by :mod:`pyg_lecc.nir` and :mod:`pyg_lecc.chem`: atomic writes
(:mod:`pyg_lecc.io.atomic`) and safetensors files with a hashed metadata header
(:mod:`pyg_lecc.io.weight_files`)."""
