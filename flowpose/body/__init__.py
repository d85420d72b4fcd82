"""The open CC0 body model: data (a frozen pytree of arrays) plus pure posing functions."""
