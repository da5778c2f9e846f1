#!/usr/bin/env python3
"""Generate the project's own offline Python function task family (train / val / test JSONL).

Small function-writing tasks from parameterised templates: each template has a description with
parameters (a threshold, a character, a step...), several function names and phrasings, an
independent oracle that computes the expected outputs the tests assert, and a reference solution
written separately (so "the reference passes its tests" is a real check, not a tautology).

- train: a few hundred {"instruction", "response", "task_id", "test", "entry_point"} records; the
  response is a short ```python fenced``` reference solution, teaching the answer format.
- val / test: human-eval problems {"task_id", "prompt", "test", "entry_point", "instruction"} from
  templates or parameter values that never occur in train (val and test are disjoint too).

The validation tasks mix very easy, easy and medium templates so that SmolLM2-135M-Instruct before
fine-tuning solves some tasks in every sample, some in a few and some in none: its val Pass@1 and
Pass@10(10) both lie strictly inside (0, 1), which the search needs to rank trials.

Deterministic: running it again rewrites byte-identical files (a test checks the shipped ones).
Usage: python scripts/make_python_tasks.py [--out-dir trainables/data/files]
"""
from __future__ import annotations

import argparse
import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "trainables" / "data" / "files"
SEED = 20251016
TRAIN_VARIANTS_PER_PARAM = 7

WRAPPERS = (
    "Write a Python function `{sig}`. {desc}",
    "Implement the Python function `{sig}`. {desc}",
    "Define a function `{sig}` in Python. {desc}",
    "{desc} Write this as a Python function `{sig}`.",
    "Complete the Python function `{sig}`. {desc}",
)
"""How an instruction wraps a signature and a description; val/test use the first."""

VOWELS = "aeiouAEIOU"


@dataclass(frozen=True)
class Template:
    """One kind of function task; `params` entries fill the {placeholders} of names, descs and body."""

    key: str
    args: str
    names: tuple[str, ...]
    descs: tuple[str, ...]
    body: str
    oracle: Callable[..., Callable[..., Any]]
    inputs: tuple[tuple[Any, ...], ...]
    train_params: tuple[dict[str, Any], ...] = ()
    eval_params: tuple[dict[str, Any], ...] = ()


def _t(key, args, names, descs, body, oracle, inputs, train=(), evals=({},)):
    return Template(key, args, tuple(names), tuple(descs), body, oracle, tuple(inputs), tuple(train), tuple(evals))


def _caesar(text: str, k: int) -> str:
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in text)


def _second_largest(numbers):
    distinct = sorted(set(numbers))
    return distinct[-2] if len(distinct) >= 2 else None


def _run_length(text: str):
    out = []
    for c in text:
        if out and out[-1][0] == c:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return "".join(f"{c}{n}" for c, n in out)


def _running(op, numbers):
    out = []
    for n in numbers:
        out.append(n if not out else op(out[-1], n))
    return out


NUMS = ([1, 2, 3, 4, 5, 6], [], [7], [-4, -3, 0, 9, 12], [10, 15, 20, 25, 31])
WORD_NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 10: "ten"}

TEMPLATES: tuple[Template, ...] = (
    # ---- shared templates: train on some parameter values, evaluate on held-out ones ----
    _t("sum_parity", "numbers", ("sum_{parity}", "{parity}_sum", "add_{parity}_numbers"),
       ("Return the sum of the {parity} numbers in the list `numbers`.",
        "Given a list of integers `numbers`, return the sum of its {parity} elements (0 if there are none)."),
       "    return sum(n for n in numbers if n % 2 == {rem})",
       lambda rem, **_: lambda numbers: sum(n for n in numbers if n % 2 == rem),
       [(x,) for x in NUMS],
       train=({"parity": "even", "rem": 0},), evals=({"parity": "odd", "rem": 1},)),
    _t("count_greater", "numbers", ("count_above_{t}", "count_greater_than_{t}", "how_many_over_{t}"),
       ("Return how many numbers in the list `numbers` are strictly greater than {t}.",
        "Count the elements of `numbers` that are larger than {t} and return that count."),
       "    return sum(1 for n in numbers if n > {t})",
       lambda t, **_: lambda numbers: sum(1 for n in numbers if n > t),
       [([1, 5, 10, 11, 100, 101],), ([],), ([200, -1, 4, 60, 3],), ([0, 0, 7, 50, 51],)],
       train=({"t": 0}, {"t": 5}, {"t": 100}), evals=({"t": 10}, {"t": 50})),
    _t("scale", "numbers", ("times_{kw}", "multiply_by_{kw}", "scale_by_{kw}"),
       ("Return a new list with every number in `numbers` multiplied by {k}.",
        "Multiply each element of the list `numbers` by {k} and return the resulting list."),
       "    return [n * {k} for n in numbers]",
       lambda k, **_: lambda numbers: [n * k for n in numbers],
       [(x,) for x in NUMS],
       train=({"k": 2, "kw": "two"}, {"k": 10, "kw": "ten"}), evals=({"k": 3, "kw": "three"}, {"k": 5, "kw": "five"})),
    _t("add_each", "numbers", ("add_{kw}", "plus_{kw}", "increase_by_{kw}"),
       ("Return a new list where {k} is added to each number in `numbers`.",
        "Add {k} to every element of the list `numbers` and return the new list."),
       "    return [n + {k} for n in numbers]",
       lambda k, **_: lambda numbers: [n + k for n in numbers],
       [(x,) for x in NUMS],
       train=({"k": 1, "kw": "one"}, {"k": 5, "kw": "five"}), evals=({"k": 7, "kw": "seven"},)),
    _t("divisible", "numbers", ("multiples_of_{k}", "divisible_by_{k}", "keep_multiples_of_{k}"),
       ("Return a list of the numbers in `numbers` that are divisible by {k}, in their original order.",
        "Keep only the elements of `numbers` that are multiples of {k} and return them as a list, preserving order."),
       "    return [n for n in numbers if n % {k} == 0]",
       lambda k, **_: lambda numbers: [n for n in numbers if n % k == 0],
       [(x,) for x in NUMS] + [([21, 28, 35, 8, 16],)],
       train=({"k": 2}, {"k": 3}), evals=({"k": 5}, {"k": 7})),
    _t("count_char", "text", ("count_{c}", "count_letter_{c}", "number_of_{c}"),
       ("Return how many times the character '{c}' appears in the string `text`.",
        "Count the occurrences of the letter '{c}' in `text` and return the count."),
       "    return text.count({c!r})",
       lambda c, **_: lambda text: text.count(c),
       [("banana",), ("",), ("the quick brown fox jumps over the lazy dog",), ("assessment tattoo",), ("xxooxx",)],
       train=({"c": "a"}, {"c": "e"}, {"c": "x"}), evals=({"c": "o"}, {"c": "s"})),
    _t("replace_spaces", "text", ("spaces_to_{cw}", "replace_spaces_with_{cw}", "fill_spaces_{cw}"),
       ("Return `text` with every space replaced by '{c}'.",
        "Replace each space character in the string `text` with '{c}' and return the result."),
       "    return text.replace(' ', {c!r})",
       lambda c, **_: lambda text: text.replace(" ", c),
       [("hello world",), ("",), ("a b  c",), ("nospace",)],
       train=({"c": "-", "cw": "dash"}, {"c": "_", "cw": "underscore"}), evals=({"c": "+", "cw": "plus"},)),
    _t("join_words", "words", ("join_with_{sw}", "{sw}_join", "concat_with_{sw}"),
       ("Return the strings in the list `words` joined into one string with '{sep}' between consecutive strings.",
        "Join the list of strings `words` using '{sep}' as the separator and return the result."),
       "    return {sep!r}.join(words)",
       lambda sep, **_: lambda words: sep.join(words),
       [(["a", "b", "c"],), ([],), (["solo"],), (["x", "", "y"],)],
       train=({"sep": ", ", "sw": "comma"}, {"sep": "-", "sw": "dash"}), evals=({"sep": "/", "sw": "slash"},)),
    _t("chunks", "items", ("chunks_of_{k}", "split_into_{kw}s", "group_by_{k}"),
       ("Split the list `items` into consecutive chunks of {k} elements and return the list of chunks (lists); the last chunk may be shorter.",),
       "    return [items[i:i + {k}] for i in range(0, len(items), {k})]",
       lambda k, **_: lambda items: [items[i:i + k] for i in range(0, len(items), k)],
       [([1, 2, 3, 4, 5, 6, 7],), ([],), ([1, 2],), (list(range(12)),)],
       train=({"k": 2, "kw": "pair"}, {"k": 3, "kw": "triple"}), evals=({"k": 4, "kw": "quad"},)),
    _t("last_k", "items", ("last_{k}", "tail_{k}", "final_{kw}")
       , ("Return the last {k} elements of the list `items` (the whole list if it has fewer than {k}).",),
       "    return items[-{k}:] if len(items) >= {k} else list(items)",
       lambda k, **_: lambda items: items[-k:] if len(items) >= k else list(items),
       [([1, 2, 3, 4, 5, 6, 7],), ([],), ([9],), (list(range(10)),)],
       train=({"k": 2, "kw": "two"}, {"k": 3, "kw": "three"}), evals=({"k": 5, "kw": "five"},)),
    _t("every_kth", "items", ("every_{kw}", "step_{k}", "take_every_{k}"),
       ("Return every {k}th element of the list `items`, starting with the first element (index 0).",),
       "    return items[::{k}]",
       lambda k, **_: lambda items: items[::k],
       [(list(range(10)),), ([],), (["a", "b", "c", "d", "e"],), ([5],)],
       train=({"k": 2, "kw": "second"}, {"k": 3, "kw": "third"}), evals=({"k": 4, "kw": "fourth"},)),
    _t("caesar", "text", ("shift_{k}", "caesar_{k}", "rotate_letters_{k}"),
       ("Return `text` with every lowercase letter shifted {k} places forward in the alphabet, wrapping around from 'z' to 'a'; all other characters stay unchanged.",),
       "    out = []\n    for ch in text:\n        if 'a' <= ch <= 'z':\n            out.append(chr((ord(ch) - ord('a') + {k}) % 26 + ord('a')))\n        else:\n            out.append(ch)\n    return ''.join(out)",
       lambda k, **_: lambda text: _caesar(text, k),
       [("abc",), ("xyz",), ("Hello, World!",), ("",)],
       train=({"k": 1}, {"k": 3}), evals=({"k": 5},)),
    _t("count_long_words", "sentence", ("count_longer_than_{k}", "long_words_over_{k}", "words_above_{k}"),
       ("Return how many words in the string `sentence` (words are separated by single spaces) have more than {k} characters.",),
       "    return sum(1 for w in sentence.split() if len(w) > {k})",
       lambda k, **_: lambda sentence: sum(1 for w in sentence.split() if len(w) > k),
       [("the quick brown fox jumps",), ("",), ("extraordinary things happen sometimes",), ("a bb ccc dddd eeeee",)],
       train=({"k": 3}, {"k": 5}), evals=({"k": 4},)),
    _t("clamp_range", "x", ("clamp_{lo}_{hi}", "limit_{lo}_{hi}", "bound_{lo}_{hi}"),
       ("Return `x` clamped to the range [{lo}, {hi}]: {lo} if `x` is smaller than {lo}, {hi} if it is larger than {hi}, otherwise `x`.",),
       "    return max({lo}, min({hi}, x))",
       lambda lo, hi, **_: lambda x: lo if x < lo else hi if x > hi else x,
       [(-50,), (0,), (7,), (1000,), (100,)],
       train=({"lo": 0, "hi": 10}, {"lo": 1, "hi": 100}), evals=({"lo": 0, "hi": 255},)),
    # ---- train-only templates ----
    _t("clamp", "x, low, high", ("clamp", "clamp_value", "limit_value"),
       ("Return `x` limited to the range [`low`, `high`]: `low` if `x` is below it, `high` if `x` is above it, otherwise `x`.",),
       "    if x < low:\n        return low\n    if x > high:\n        return high\n    return x",
       lambda **_: lambda x, low, high: low if x < low else high if x > high else x,
       [(5, 0, 10), (-3, 0, 10), (11, 0, 10), (0, 0, 0)], train=({},), evals=()),
    _t("running_sum", "numbers", ("running_sum", "cumulative_sum", "prefix_sums"),
       ("Return a list whose i-th element is the sum of `numbers[0]` through `numbers[i]` (the running total).",),
       "    total = 0\n    out = []\n    for n in numbers:\n        total += n\n        out.append(total)\n    return out",
       lambda **_: lambda numbers: _running(lambda a, b: a + b, numbers),
       [(x,) for x in NUMS], train=({},), evals=()),
    _t("rotate_left", "items, k", ("rotate_left", "rotate_list", "left_rotate"),
       ("Return the list `items` rotated to the left by `k` positions (`k` may be larger than the length; an empty list stays empty).",),
       "    if not items:\n        return []\n    k %= len(items)\n    return items[k:] + items[:k]",
       lambda **_: lambda items, k: items[k % len(items):] + items[:k % len(items)] if items else [],
       [([1, 2, 3, 4, 5], 2), ([1, 2, 3], 0), ([], 3), ([1, 2, 3], 4)], train=({},), evals=()),
    _t("reverse_words", "sentence", ("reverse_words", "words_backwards", "flip_word_order"),
       ("Return `sentence` with the order of its words reversed; words are separated by single spaces.",),
       "    return ' '.join(reversed(sentence.split(' ')))",
       lambda **_: lambda sentence: " ".join(sentence.split(" ")[::-1]),
       [("hello world",), ("one",), ("a b c d",)], train=({},), evals=()),
    _t("title_words", "sentence", ("capitalize_words", "title_case", "upper_first_letters"),
       ("Return `sentence` with the first letter of every word in upper case and the rest of each word unchanged; words are separated by single spaces.",),
       "    return ' '.join(w[:1].upper() + w[1:] for w in sentence.split(' '))",
       lambda **_: lambda sentence: " ".join((w[0].upper() + w[1:]) if w else w for w in sentence.split(" ")),
       [("hello world",), ("python is fun",), ("already Capital",)], train=({},), evals=()),
    _t("dedupe", "items", ("remove_duplicates", "unique_in_order", "dedupe"),
       ("Return a list of the elements of `items` with duplicates removed, keeping the first occurrence of each in the original order.",),
       "    seen = set()\n    out = []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out",
       lambda **_: lambda items: list(dict.fromkeys(items)),
       [([1, 2, 1, 3, 2],), ([],), (["b", "a", "b"],)], train=({},), evals=()),
    _t("mean", "numbers", ("mean", "average", "list_average"),
       ("Return the average of the numbers in `numbers` as a float, or 0.0 if the list is empty.",),
       "    if not numbers:\n        return 0.0\n    return sum(numbers) / len(numbers)",
       lambda **_: lambda numbers: (sum(numbers) / len(numbers)) if numbers else 0.0,
       [([1, 2, 3, 4],), ([],), ([5],), ([-1, 1],)], train=({},), evals=()),
    _t("fibonacci", "n", ("fib", "fibonacci", "nth_fibonacci"),
       ("Return the `n`-th Fibonacci number, where the 0th is 0 and the 1st is 1.",),
       "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
       lambda **_: lambda n: [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987][n],
       [(0,), (1,), (2,), (10,), (16,)], train=({},), evals=()),
    _t("is_prime", "n", ("is_prime", "prime_check", "check_prime"),
       ("Return True if the integer `n` is a prime number, otherwise False.",),
       "    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True",
       lambda **_: lambda n: n in {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 97},
       [(0,), (1,), (2,), (9,), (17,), (97,), (91,)], train=({},), evals=()),
    _t("gcd", "a, b", ("gcd", "greatest_common_divisor", "highest_common_factor"),
       ("Return the greatest common divisor of the positive integers `a` and `b`.",),
       "    while b:\n        a, b = b, a % b\n    return a",
       lambda **_: lambda a, b: max(d for d in range(1, min(a, b) + 1) if a % d == 0 and b % d == 0),
       [(12, 18), (7, 5), (100, 75), (9, 9)], train=({},), evals=()),
    _t("count_words", "text", ("count_words", "word_count", "number_of_words"),
       ("Return the number of words in the string `text`, where words are separated by whitespace.",),
       "    return len(text.split())",
       lambda **_: lambda text: len(text.split()),
       [("hello world",), ("",), ("  spaced   out  ",), ("one",)], train=({},), evals=()),
    _t("indices_of", "items, target", ("indices_of", "find_all", "positions_of")
       , ("Return a list of the indices at which `target` occurs in the list `items`.",),
       "    return [i for i, x in enumerate(items) if x == target]",
       lambda **_: lambda items, target: [i for i in range(len(items)) if items[i] == target],
       [([1, 2, 1, 3], 1), ([], 5), (["a", "b"], "c")], train=({},), evals=()),
    _t("flatten", "lists", ("flatten", "concat_lists", "merge_lists")
       , ("Return a single list with all elements of the lists in `lists`, in order.",),
       "    return [x for sub in lists for x in sub]",
       lambda **_: lambda lists: sum(lists, []),
       [([[1, 2], [3], []],), ([],), ([["a"], ["b", "c"]],)], train=({},), evals=()),
    _t("longest_word", "sentence", ("longest_word", "find_longest_word", "biggest_word"),
       ("Return the longest word in the string `sentence` (words are separated by spaces); if several are equally long, return the first of them.",),
       "    best = ''\n    for w in sentence.split():\n        if len(w) > len(best):\n            best = w\n    return best",
       lambda **_: lambda sentence: max(sentence.split(), key=len),
       [("the quick brown fox",), ("a bb cc",), ("word",)], train=({},), evals=()),
    _t("max_abs", "numbers", ("max_abs", "largest_magnitude", "max_absolute")
       , ("Return the largest absolute value among the numbers in the non-empty list `numbers`.",),
       "    return max(abs(n) for n in numbers)",
       lambda **_: lambda numbers: sorted(abs(n) for n in numbers)[-1],
       [([1, -5, 3],), ([0],), ([-2, -1],)], train=({},), evals=()),
    _t("is_sorted", "numbers", ("is_sorted", "sorted_ascending", "check_sorted"),
       ("Return True if the list `numbers` is sorted in non-decreasing order, otherwise False.",),
       "    return all(numbers[i] <= numbers[i + 1] for i in range(len(numbers) - 1))",
       lambda **_: lambda numbers: numbers == sorted(numbers),
       [([1, 2, 2, 5],), ([],), ([3, 1],), ([4],)], train=({},), evals=()),
    _t("char_freq", "text", ("char_counts", "char_frequency", "letter_histogram"),
       ("Return a dictionary mapping each character of the string `text` to the number of times it appears.",),
       "    counts = dict()\n    for ch in text:\n        counts[ch] = counts.get(ch, 0) + 1\n    return counts",
       lambda **_: lambda text: {c: text.count(c) for c in text},
       [("hello",), ("",), ("aaa",)], train=({},), evals=()),
    _t("remove_vowels", "text", ("remove_vowels", "strip_vowels", "drop_vowels"),
       ("Return `text` with all vowels (a, e, i, o, u, in upper or lower case) removed.",),
       "    return ''.join(ch for ch in text if ch not in 'aeiouAEIOU')",
       lambda **_: lambda text: "".join(c for c in text if c not in VOWELS),
       [("hello world",), ("AEIOU",), ("",), ("rhythm",)], train=({},), evals=()),
    _t("count_upper", "text", ("count_upper", "uppercase_count", "count_capitals"),
       ("Return the number of upper-case letters in the string `text`.",),
       "    return sum(1 for ch in text if ch.isupper())",
       lambda **_: lambda text: sum(c.isupper() for c in text),
       [("Hello World",), ("",), ("ABC def",)], train=({},), evals=()),
    _t("pairwise_sum", "a, b", ("add_lists", "pairwise_sum", "elementwise_sum"),
       ("Return a list where each element is the sum of the elements at the same position in the equal-length lists `a` and `b`.",),
       "    return [x + y for x, y in zip(a, b)]",
       lambda **_: lambda a, b: [a[i] + b[i] for i in range(len(a))],
       [([1, 2], [3, 4]), ([], []), ([-1], [1])], train=({},), evals=()),
    _t("to_binary", "n", ("to_binary", "binary_string", "int_to_binary"),
       ("Return the binary representation of the non-negative integer `n` as a string without the '0b' prefix.",),
       "    return bin(n)[2:]",
       lambda **_: lambda n: format(n, "b"),
       [(0,), (5,), (8,), (255,)], train=({},), evals=()),
    _t("min_value", "numbers", ("smallest", "min_value", "find_min"),
       ("Return the smallest number in the non-empty list `numbers`.",),
       "    return min(numbers)",
       lambda **_: lambda numbers: sorted(numbers)[0],
       [([3, 1, 2],), ([5],), ([-1, -7, 0],)], train=({},), evals=()),
    _t("string_length_even", "s", ("has_even_length", "even_length", "is_even_length"),
       ("Return True if the string `s` has an even number of characters, otherwise False.",),
       "    return len(s) % 2 == 0",
       lambda **_: lambda s: len(s) in (0, 2, 4, 6, 8, 10),
       [("ab",), ("",), ("abc",)], train=({},), evals=()),
    # ---- evaluation-only templates (val or test) ----
    _t("reverse_string", "s", ("reverse_string",), ("Return the string `s` reversed.",),
       "    return s[::-1]", lambda **_: lambda s: "".join(reversed(s)),
       [("hello",), ("",), ("ab",), ("racecar",)]),
    _t("is_even", "n", ("is_even",), ("Return True if the integer `n` is even, otherwise False.",),
       "    return n % 2 == 0", lambda **_: lambda n: n % 2 == 0, [(0,), (3,), (10,), (-7,)]),
    _t("max_of_three", "a, b, c", ("max_of_three",), ("Return the largest of the three numbers `a`, `b` and `c`.",),
       "    return max(a, b, c)", lambda **_: lambda a, b, c: sorted([a, b, c])[-1],
       [(1, 2, 3), (3, 2, 1), (-1, -5, -3), (4, 4, 2)]),
    _t("square_list", "numbers", ("square_all",), ("Return a list of the squares of the numbers in the list `numbers`.",),
       "    return [n * n for n in numbers]", lambda **_: lambda numbers: [n ** 2 for n in numbers],
       [(x,) for x in NUMS]),
    _t("sum_to_n", "n", ("sum_to_n",), ("Return the sum of the integers from 1 to `n` (0 when `n` is 0).",),
       "    return n * (n + 1) // 2", lambda **_: lambda n: sum(range(1, n + 1)), [(0,), (1,), (10,), (100,)]),
    _t("is_palindrome", "s", ("is_palindrome",),
       ("Return True if the string `s` reads the same forwards and backwards, otherwise False.",),
       "    return s == s[::-1]", lambda **_: lambda s: list(s) == list(reversed(s)),
       [("racecar",), ("hello",), ("",), ("abba",), ("ab",)]),
    _t("factorial", "n", ("factorial",), ("Return the factorial of the non-negative integer `n` (the factorial of 0 is 1).",),
       "    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
       lambda **_: lambda n: [1, 1, 2, 6, 24, 120, 720, 5040, 40320, 362880, 3628800][n], [(0,), (1,), (5,), (10,)]),
    _t("count_vowels", "text", ("count_vowels",),
       ("Return the number of vowels (a, e, i, o, u, in upper or lower case) in the string `text`.",),
       "    return sum(1 for ch in text if ch in 'aeiouAEIOU')", lambda **_: lambda text: sum(c in VOWELS for c in text),
       [("hello",), ("",), ("AEIOU xyz",), ("rhythm",)]),
    _t("count_negatives", "numbers", ("count_negatives",), ("Return how many numbers in the list `numbers` are negative.",),
       "    return sum(1 for n in numbers if n < 0)", lambda **_: lambda numbers: len([n for n in numbers if n < 0]),
       [(x,) for x in NUMS] + [([-1, -2, -3],)]),
    _t("digit_sum", "n", ("digit_sum",), ("Return the sum of the decimal digits of the non-negative integer `n`.",),
       "    return sum(int(d) for d in str(n))", lambda **_: lambda n: sum(map(int, str(n))), [(0,), (7,), (123,), (9999,)]),
    _t("product", "numbers", ("product",), ("Return the product of all numbers in the list `numbers` (1 for an empty list).",),
       "    result = 1\n    for n in numbers:\n        result *= n\n    return result",
       lambda **_: lambda numbers: _running(lambda a, b: a * b, [1] + numbers)[-1], [(x,) for x in NUMS]),
    _t("second_largest", "numbers", ("second_largest",),
       ("Return the second largest distinct value in the list `numbers`, or None if it has fewer than two distinct values.",),
       "    distinct = sorted(set(numbers))\n    return distinct[-2] if len(distinct) >= 2 else None",
       lambda **_: _second_largest, [([1, 3, 2],), ([5, 5],), ([],), ([4, 9, 9, 7],)]),
    _t("running_max", "numbers", ("running_max",),
       ("Return a list whose i-th element is the largest value among `numbers[0]` through `numbers[i]` (the running maximum).",),
       "    out = []\n    for n in numbers:\n        out.append(n if not out else max(out[-1], n))\n    return out",
       lambda **_: lambda numbers: [max(numbers[: i + 1]) for i in range(len(numbers))],
       [([1, 3, 2, 5, 4],), ([],), ([-1, -2],)]),
    _t("differences", "numbers", ("differences",),
       ("Return a list of the differences between consecutive elements of `numbers` (each element minus the one before it).",),
       "    return [numbers[i] - numbers[i - 1] for i in range(1, len(numbers))]",
       lambda **_: lambda numbers: [b - a for a, b in zip(numbers, numbers[1:])],
       [([1, 4, 9, 16],), ([],), ([5],), ([3, 1],)]),
    _t("index_of_max", "numbers", ("index_of_max",),
       ("Return the index of the largest number in the non-empty list `numbers` (the first index if the largest occurs more than once).",),
       "    return numbers.index(max(numbers))", lambda **_: lambda numbers: max(range(len(numbers)), key=lambda i: (numbers[i], -i)),
       [([1, 5, 3],), ([7],), ([2, 9, 9],), ([-3, -1, -2],)]),
    _t("count_less", "numbers", ("count_below_{t}",), ("Return how many numbers in the list `numbers` are strictly less than {t}.",),
       "    return sum(1 for n in numbers if n < {t})", lambda t, **_: lambda numbers: len([n for n in numbers if n < t]),
       [([1, 5, 10, 11],), ([],), ([200, -1, 4, 60],)], evals=({"t": 5},)),
    _t("fahrenheit", "celsius", ("celsius_to_fahrenheit",),
       ("Convert the temperature `celsius` from degrees Celsius to degrees Fahrenheit and return it.",),
       "    return celsius * 9 / 5 + 32", lambda **_: lambda celsius: 32 + 1.8 * celsius, [(0,), (100,), (-40,), (37,)]),
    _t("is_power_of_two", "n", ("is_power_of_two",), ("Return True if the positive integer `n` is a power of two, otherwise False.",),
       "    return n > 0 and n & (n - 1) == 0", lambda **_: lambda n: n in {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024},
       [(1,), (6,), (64,), (1000,)]),
    _t("swap_case", "text", ("swap_case",), ("Return `text` with upper-case letters made lower case and lower-case letters made upper case.",),
       "    return text.swapcase()", lambda **_: lambda text: "".join(c.lower() if c.isupper() else c.upper() for c in text),
       [("Hello",), ("",), ("aBc 12",)]),
    _t("dot_product", "a, b", ("dot_product",), ("Return the dot product of the equal-length lists of numbers `a` and `b`.",),
       "    return sum(x * y for x, y in zip(a, b))", lambda **_: lambda a, b: sum(a[i] * b[i] for i in range(len(a))),
       [([1, 2, 3], [4, 5, 6]), ([], []), ([-1], [3])]),
    _t("is_anagram", "a, b", ("is_anagram",),
       ("Return True if the strings `a` and `b` contain exactly the same characters the same number of times, otherwise False.",),
       "    return sorted(a) == sorted(b)", lambda **_: lambda a, b: {c: a.count(c) for c in a} == {c: b.count(c) for c in b},
       [("listen", "silent"), ("abc", "abd"), ("", ""), ("aab", "abb")]),
    _t("run_length", "text", ("run_length_encode",),
       ("Return the run-length encoding of `text`: each run of a repeated character becomes the character followed by the run length, e.g. 'aaab' becomes 'a3b1'.",),
       "    out = ''\n    i = 0\n    while i < len(text):\n        j = i\n        while j < len(text) and text[j] == text[i]:\n            j += 1\n        out += text[i] + str(j - i)\n        i = j\n    return out",
       lambda **_: _run_length, [("aaab",), ("",), ("abc",), ("zzzzzzzzzzzz",)]),
    _t("count_evens", "numbers", ("count_evens",), ("Return how many even numbers the list `numbers` contains.",),
       "    return sum(1 for n in numbers if n % 2 == 0)", lambda **_: lambda numbers: len([n for n in numbers if n % 2 == 0]),
       [(x,) for x in NUMS]),
    _t("abs_difference", "a, b", ("abs_difference",), ("Return the absolute difference between the numbers `a` and `b`.",),
       "    return abs(a - b)", lambda **_: lambda a, b: a - b if a > b else b - a, [(3, 10), (10, 3), (-2, 2), (5, 5)]),
    _t("rotate_right", "items", ("rotate_right_one",),
       ("Return the list `items` rotated to the right by one position (the last element moves to the front); an empty list stays empty.",),
       "    return items[-1:] + items[:-1]", lambda **_: lambda items: ([items[-1]] + items[:-1]) if items else [],
       [([1, 2, 3],), ([],), ([5],)]),
)
"""Every task template of the family."""

VAL_TASKS = (
    # very easy: the base model usually gets every sample right
    ("reverse_string", {}), ("is_even", {}), ("max_of_three", {}), ("square_list", {}), ("sum_to_n", {}),
    ("is_palindrome", {}),
    # easy: most samples pass
    ("factorial", {}), ("count_vowels", {}), ("count_negatives", {}), ("digit_sum", {}), ("product", {}),
    ("fahrenheit", {}), ("sum_parity", {"parity": "odd", "rem": 1}), ("scale", {"k": 3, "kw": "three"}),
    # medium: a few samples pass
    ("count_greater", {"t": 10}), ("divisible", {"k": 5}), ("count_char", {"c": "o"}), ("count_less", {"t": 5}),
    ("second_largest", {}), ("running_max", {}), ("differences", {}), ("index_of_max", {}),
)
"""(template, params) of the validation problems; the search sees only these."""

TEST_TASKS = (
    ("is_power_of_two", {}), ("swap_case", {}), ("dot_product", {}), ("is_anagram", {}), ("run_length", {}),
    ("count_evens", {}), ("abs_difference", {}), ("rotate_right", {}),
    ("count_greater", {"t": 50}), ("scale", {"k": 5, "kw": "five"}), ("add_each", {"k": 7, "kw": "seven"}),
    ("divisible", {"k": 7}), ("count_char", {"c": "s"}), ("replace_spaces", {"c": "+", "cw": "plus"}),
    ("join_words", {"sep": "/", "sw": "slash"}), ("chunks", {"k": 4, "kw": "quad"}), ("last_k", {"k": 5, "kw": "five"}),
    ("every_kth", {"k": 4, "kw": "fourth"}), ("caesar", {"k": 5}), ("count_long_words", {"k": 4}),
    ("clamp_range", {"lo": 0, "hi": 255}),
)
"""(template, params) of the test problems, reported once per finished trial."""


def _fill(text: str, params: dict[str, Any]) -> str:
    return text.format(**params)


def _check_source(template: Template, params: dict[str, Any]) -> str:
    oracle = template.oracle(**params)
    lines = ["def check(candidate):"]
    for args in template.inputs:
        # Copies: an oracle must not see (or leave) inputs mutated by another call.
        expected = oracle(*copy.deepcopy(args))
        call = f"candidate({', '.join(repr(a) for a in args)})"
        if isinstance(expected, float):
            lines.append(f"    assert abs({call} - {expected!r}) < 1e-6")
        else:
            lines.append(f"    assert {call} == {expected!r}")
    return "\n".join(lines) + "\n"


def _solution(template: Template, params: dict[str, Any], name: str) -> str:
    return f"def {name}({template.args}):\n{_fill(template.body, params)}\n"


def _instruction(wrapper: str, template: Template, params: dict[str, Any], name: str, desc: str) -> str:
    return wrapper.format(sig=f"{name}({template.args})", desc=_fill(desc, params))


def make_train(templates: dict[str, Template], rng: random.Random) -> list[dict[str, Any]]:
    """Train records: for each (template, train parameter) a few distinct name/description/wrapper variants."""
    records = []
    for template in templates.values():
        for p_index, params in enumerate(template.train_params):
            combos = [
                (name, desc, wrapper)
                for name in template.names
                for desc in template.descs
                for wrapper in WRAPPERS
            ]
            rng.shuffle(combos)
            for v_index, (name, desc, wrapper) in enumerate(combos[:TRAIN_VARIANTS_PER_PARAM]):
                entry = _fill(name, params)
                code = _solution(template, params, entry)
                records.append({
                    "task_id": f"PyFn/train/{template.key}/{p_index}/{v_index}",
                    "instruction": _instruction(wrapper, template, params, entry, desc),
                    "response": f"```python\n{code}```",
                    "entry_point": entry,
                    "test": _check_source(template, params),
                    "solution": code,
                })
    rng.shuffle(records)
    return records


def make_problems(
    templates: dict[str, Template], tasks: tuple[tuple[str, dict[str, Any]], ...], split: str
) -> list[dict[str, Any]]:
    """Human-eval problems (prompt = signature + docstring) for the (template, params) pairs of a split."""
    problems = []
    for index, (key, params) in enumerate(tasks):
        template = templates[key]
        if params not in template.eval_params:
            raise ValueError(f"{split} task {key} {params} is not among the template's held-out parameters")
        entry = _fill(template.names[0], params)
        desc = _fill(template.descs[0], params)
        problems.append({
            "task_id": f"PyFn/{split}/{index}",
            "prompt": f'def {entry}({template.args}):\n    """{desc}\n    """\n',
            "entry_point": entry,
            "test": _check_source(template, params),
            "instruction": _instruction(WRAPPERS[0], template, params, entry, template.descs[0]),
            "canonical_solution": _fill(template.body, params) + "\n",
        })
    return problems


def build() -> dict[str, list[dict[str, Any]]]:
    """All three splits, deterministically."""
    templates = {t.key: t for t in TEMPLATES}
    if len(templates) != len(TEMPLATES):
        raise ValueError("duplicate template keys")
    used = [(k, json.dumps(p, sort_keys=True)) for k, p in VAL_TASKS + TEST_TASKS]
    if len(set(used)) != len(used):
        raise ValueError("a (template, params) pair is in both val and test (or twice)")
    return {
        "train": make_train(templates, random.Random(SEED)),
        "val": make_problems(templates, VAL_TASKS, "val"),
        "test": make_problems(templates, TEST_TASKS, "test"),
    }


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line, keys in a fixed order, UTF-8, "\\n" line ends."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the JSONL files are written")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, records in build().items():
        path = args.out_dir / f"python_functions_{split}.jsonl"
        write_jsonl(path, records)
        print(f"{path}: {len(records)} records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
