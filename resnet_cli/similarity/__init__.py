"""From features to answers: `resnet index`, `search`, `duplicates` and `audit`.

Built on extract's pipeline (every feature row comes from `extract.extract_features`) and on
three maintained libraries from the `data` extra: faiss (exact inner-product neighbours,
blockwise), imagehash (perceptual hashes for copies) and scikit-learn with cleanlab (out-of-
sample probabilities and the label-issue ranking). One module per job:

- `records`: the results, plain dataclasses (drawn by `render.similarity`);
- `vectors`: a feature set (L2-normalised rows, paths, the model record), read from an extract
  output or computed through extract, and the model record's rules (search, --append);
- `index`: the index folder format, atomic writes, --append, --from;
- `neighbors`: k nearest neighbours and pairs above a threshold, never an N x N matrix;
- `groups`: groups that never chain (every member within the threshold of its representative);
- `copies`: perceptual hashes and copy pairs;
- `search`, `duplicates`, `audit`: the commands' logic.
"""
