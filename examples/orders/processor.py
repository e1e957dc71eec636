"""Order events: validate with pydantic, compute the total, dead-letter invalid orders."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from onceflow import Event


class Item(BaseModel):
    """One line of an order."""

    sku: str = Field(min_length=1)
    price: Decimal = Field(ge=0)
    quantity: int = Field(gt=0)


class Order(BaseModel):
    """An order as it arrives on the wire."""

    order_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    items: list[Item] = Field(min_length=1)


class OrderTotal(BaseModel):
    """What the pipeline writes for each order."""

    order_id: str
    user_id: str
    items: int
    total: Decimal


class OrderProcessor:
    """Validates an order and emits its total; a schema violation is dead-lettered."""

    def process(self, event: Event) -> OrderTotal:
        """The order's total."""
        order = Order.model_validate_json(event.data)
        total = sum((item.price * item.quantity for item in order.items), Decimal("0"))
        return OrderTotal(
            order_id=order.order_id,
            user_id=order.user_id,
            items=sum(item.quantity for item in order.items),
            total=total,
        )
