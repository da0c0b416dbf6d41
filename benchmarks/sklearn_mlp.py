"""The scikit-learn twin of `python run.py`'s default job, as a user would write it.

digits, stratified train/test split (and the same val part ffn holds out, unused here), scaled
by the train part, a 64-128-10 ReLU MLP, Adam lr 3e-3, batch 64, 100 epochs, no penalty.
`python benchmarks/sklearn_mlp.py [--all-epochs] [LR ...]` fits once per learning rate (default
3e-3). MLPClassifier stops by itself once the training loss improves by less than `tol` for 10
epochs (after about 49 on digits); `--all-epochs` runs all 100 epochs, as ffn does.
"""

import sys

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

args = sys.argv[1:]
all_epochs = "--all-epochs" in args
lrs = [float(a) for a in args if a != "--all-epochs"] or [3e-3]
x, y = load_digits(return_X_y=True)
split = dict(random_state=0)  # test 20% and val 15% of 1797 rows, as ffn's defaults
x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=359, stratify=y, **split)
x_train, _, y_train, _ = train_test_split(x_rest, y_rest, test_size=270, stratify=y_rest, **split)
scale = StandardScaler().fit(x_train)
x_train, x_test = scale.transform(x_train), scale.transform(x_test)
for lr in lrs:
    mlp = MLPClassifier(
        hidden_layer_sizes=(128,),
        learning_rate_init=lr,
        batch_size=64,
        max_iter=100,
        alpha=0,
        random_state=0,
        n_iter_no_change=100 if all_epochs else 10,
    )
    mlp.fit(x_train, y_train)
    print(f"lr={lr:g} epochs={mlp.n_iter_} test/accuracy={mlp.score(x_test, y_test):.4f}")
