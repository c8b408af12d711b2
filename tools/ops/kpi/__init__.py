"""The shop's KPIs, folded from the Kafka topics (never from the services' databases).

:class:`~tools.ops.kpi.book.KpiBook` is a pure fold: ``add(topic, event, at)`` takes one decoded record value and
its record timestamp; ``report()`` answers for any time window (a :class:`~tools.ops.kpi.report.KpiReport`);
``collector()`` exposes Prometheus metrics. :func:`~tools.ops.kpi.read.read_kpis` feeds a book from the topics
(``fulfil kpi``); the ops console feeds one from its live consumer.

What counts, and when (every figure is attributed to the Kafka timestamp of the record that established it, so an
order accepted at 09:59 and completed at 10:01 is *accepted* in the 09:00 hour and *completed* in the 10:00 hour):

* **placed**: distinct ``order_id``s with an ``OrderPlaced`` on ``storefront.orders`` (a storefront's retry of the
  same order counts once). **accepted**: ``OrderAccepted``. **completed** / **cancelled**: ``OrderCompleted`` /
  ``OrderCancelled``. **rejected**: orders refused at placement that never started a saga (``OrderRejected`` and no
  ``OrderAccepted``); ``rejections_by_reason`` counts every refusal, a second order under a known id
  (``order_id_conflict``) included.
* **GMV**: the sum of ``OrderAccepted.total`` of the orders accepted in the window, in CNY. Cancellations and
  refunds are *not* subtracted (that is GMV); money that really moved is **captured** (``PaymentCaptured``),
  **refunded** (``PaymentRefunded``) and **net_revenue** = captured - refunded. Voids move no money. Orders in
  another currency are counted (``orders_other_currency``) but left out of every money figure: nothing is converted.
* **AOV** = GMV / accepted CNY orders, rounded half-up to the fen.
* **payment success rate** = authorised / attempted, attempted = ``PaymentAuthorized`` + ``PaymentDeclined`` (a
  payment that got an answer). A provider outage gives no answer: it shows as a cancellation with reason ``timeout``.
* **cancellation rate** = cancelled / (completed + cancelled): the share of sagas ending in the window that ended
  cancelled. ``cancellations_by_reason`` uses the order service's reasons (``payment_declined``, ``out_of_stock``,
  ``shipping_failed``, ``timeout``, ``customer_request``).
* **fulfilment time**: ``OrderCompleted`` minus the order's first ``OrderPlaced`` (else its ``OrderAccepted``),
  record timestamps, over the orders completed in the window; p50/p95 interpolated between closest ranks.
  It ends when the saga completes (shipment booked and payment captured), not at delivery.
* **delivered**: orders with a ``ShipmentTracked`` of milestone ``DELIVERED`` on ``shipping.events``, dated by the
  first such record (not by the carrier's clock: a push read late counts when it was read). The carrier's word is
  taken as it is: a parcel intercepted after a cancellation that its carrier then reports delivered counts as
  delivered (the order service also takes it so: a delivered order can no longer be cancelled).
* **delivery time**: the carrier's ``at`` of the order's ``DELIVERED`` step (the earliest, if a carrier reports two)
  minus the order's first ``OrderPlaced`` (else its ``OrderAccepted``) record timestamp, over the orders delivered in
  the window; p50/p95 interpolated like fulfilment time, negative (clock skew) as 0. The other milestones (picked
  up, in transit, out for delivery, exception) and ``ShipmentIntercepted`` are no KPI: they are ignored.
* **per payment method / shipping option** from the order's ``OrderAccepted`` (else its ``OrderPlaced``); **per
  carrier** from ``ShipmentScheduled``/``OrderCompleted``/a delivered ``ShipmentTracked`` (``none``: never shipped).
  ``unknown``: the event that names it was not read (it is older than what was read); ``other``: a value outside
  the contract's.

Kafka delivers at least once, and replays re-publish: each fact is kept once per order (the earliest record of it),
so a repeated ``event_id`` -- or a new event restating a fact already known -- changes nothing. The fold is also
independent of the order records arrive in, across topics, which no consumer of several topics can promise.

The Prometheus counters count what the book saw happen from ``counting_from`` on (by default the book's creation):
a process that re-reads the topics' history at start does not replay it as a burst into ``rate()``; a restart is a
counter reset, which PromQL handles. A histogram observes an order's time once, when it is first known (a delivery
counts in ``fulfil_kpi_delivery_seconds`` once both its delivery, from ``counting_from`` on, and its start are read).

A parcel takes days, far more than the 30 minutes :func:`read_kpis` reads before ``since``: for the orders delivered
in the window whose start it has not read, it reads their earlier records of ``storefront.orders`` and
``order.events`` back to ``DELIVERY_CONTEXT`` (the topics keep 7 days; an order placed before that has no delivery
time, and its method and option stay ``unknown``).
"""
