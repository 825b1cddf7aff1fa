//! Every SQS call the relay makes, in one place: the copy queue's sends,
//! the poller's receives and deletes, the settler's backoffs and
//! re-enqueues, the dead letters, the parking lot and the operator
//! commands all go through [`Sqs`]. What a function may call is what its
//! IAM role allows, so the calls are easy to list here; each failure is an
//! [`AwsError`] naming the call and the queue.

use std::collections::HashMap;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};

use crate::aws_error::AwsError;

pub use aws_sdk_sqs::types::Message as Received;

/// An SQS client, by the calls the relay makes with it.
#[derive(Clone, Debug)]
pub struct Sqs {
    client: aws_sdk_sqs::Client,
}

/// A message to send: its body, its delay and the relay's attributes.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub body: String,
    /// `DelaySeconds`; `None` leaves the queue's default.
    pub delay_seconds: Option<i32>,
    pub attributes: HashMap<String, MessageAttributeValue>,
}

impl Outgoing {
    pub fn new(body: impl Into<String>) -> Outgoing {
        Outgoing { body: body.into(), ..Default::default() }
    }

    pub fn delay_seconds(mut self, seconds: i32) -> Outgoing {
        self.delay_seconds = Some(seconds);
        self
    }

    pub fn attribute(mut self, name: &str, value: MessageAttributeValue) -> Outgoing {
        self.attributes.insert(name.to_owned(), value);
        self
    }
}

/// How to receive: how many, how long to wait, and which attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Receive<'a> {
    pub max: i32,
    /// `WaitTimeSeconds` (a long poll); `None`: the queue's default.
    pub wait_seconds: Option<i32>,
    /// `VisibilityTimeout` of the received messages; `None`: the queue's.
    pub visibility_seconds: Option<i32>,
    /// Message attributes to read (`All` for every one).
    pub attributes: &'a [&'a str],
    /// Whether to read `ApproximateReceiveCount`.
    pub receive_count: bool,
}

/// The entries of a batch call that SQS refused: (index in the batch,
/// SQS's error code, its message).
pub type Refused = Vec<(usize, String, String)>;

impl Sqs {
    pub fn new(client: aws_sdk_sqs::Client) -> Sqs {
        Sqs { client }
    }

    /// `GetQueueAttributes` for `names`.
    pub async fn attributes(
        &self,
        url: &str,
        names: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, String>, AwsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::sdk("GetQueueAttributes", url, &e))?;
        Ok(out.attributes().cloned().unwrap_or_default())
    }

    /// `GetQueueUrl` of the queue named `name`.
    pub async fn queue_url(&self, name: &str) -> Result<String, AwsError> {
        let out = self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| AwsError::sdk("GetQueueUrl", name, &e))?;
        Ok(out.queue_url().ok_or_else(|| AwsError::answer("GetQueueUrl", name, "no URL"))?.to_owned())
    }

    /// `SendMessage`.
    pub async fn send(&self, url: &str, message: Outgoing) -> Result<(), AwsError> {
        self.client
            .send_message()
            .queue_url(url)
            .message_body(message.body)
            .set_delay_seconds(message.delay_seconds)
            .set_message_attributes(Some(message.attributes).filter(|a| !a.is_empty()))
            .send()
            .await
            .map_err(|e| AwsError::sdk("SendMessage", url, &e))?;
        Ok(())
    }

    /// `SendMessageBatch` of at most ten messages, their ids their indexes;
    /// the entries SQS refused.
    pub async fn send_batch(&self, url: &str, messages: Vec<Outgoing>) -> Result<Refused, AwsError> {
        let entries = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(m.body)
                    .set_delay_seconds(m.delay_seconds)
                    .set_message_attributes(Some(m.attributes).filter(|a| !a.is_empty()))
                    .build()
                    .expect("id and body are set")
            })
            .collect();
        let out = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| AwsError::sdk("SendMessageBatch", url, &e))?;
        Ok(refused(out.failed().iter().map(|f| (f.id(), f.code(), f.message()))))
    }

    /// `ReceiveMessage`.
    pub async fn receive(&self, url: &str, how: Receive<'_>) -> Result<Vec<Received>, AwsError> {
        let system = how.receive_count.then(|| vec![MessageSystemAttributeName::ApproximateReceiveCount]);
        let attributes = Some(how.attributes.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(how.max)
            .set_message_system_attribute_names(system)
            .set_message_attribute_names(attributes.filter(|a| !a.is_empty()))
            .set_visibility_timeout(how.visibility_seconds)
            .set_wait_time_seconds(how.wait_seconds)
            .send()
            .await
            .map_err(|e| AwsError::sdk("ReceiveMessage", url, &e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// `DeleteMessage`.
    pub async fn delete(&self, url: &str, receipt: &str) -> Result<(), AwsError> {
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DeleteMessage", url, &e))?;
        Ok(())
    }

    /// `DeleteMessageBatch` of at most ten receipts, their ids their
    /// indexes: (the indexes deleted, the entries refused).
    pub async fn delete_batch(&self, url: &str, receipts: &[&str]) -> Result<(Vec<usize>, Refused), AwsError> {
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*r)
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        let out = self
            .client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| AwsError::sdk("DeleteMessageBatch", url, &e))?;
        let deleted = out.successful().iter().filter_map(|e| e.id().parse().ok()).collect();
        Ok((deleted, refused(out.failed().iter().map(|f| (f.id(), f.code(), f.message())))))
    }

    /// `ChangeMessageVisibility`.
    pub async fn change_visibility(&self, url: &str, receipt: &str, seconds: i32) -> Result<(), AwsError> {
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| AwsError::sdk("ChangeMessageVisibility", url, &e))?;
        Ok(())
    }

    /// `ChangeMessageVisibilityBatch` of at most ten receipts, their ids
    /// their indexes: the entries refused.
    pub async fn change_visibility_batch(
        &self,
        url: &str,
        receipts: &[&str],
        seconds: i32,
    ) -> Result<Refused, AwsError> {
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*r)
                    .visibility_timeout(seconds)
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| AwsError::sdk("ChangeMessageVisibilityBatch", url, &e))?;
        Ok(refused(out.failed().iter().map(|f| (f.id(), f.code(), f.message()))))
    }
}

impl From<aws_sdk_sqs::Client> for Sqs {
    fn from(client: aws_sdk_sqs::Client) -> Sqs {
        Sqs::new(client)
    }
}

fn refused<'a>(failed: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)>) -> Refused {
    failed
        .filter_map(|(id, code, message)| {
            Some((id.parse().ok()?, code.to_owned(), message.unwrap_or_default().to_owned()))
        })
        .collect()
}

/// A received message's attribute, as a string.
pub fn attribute<'m>(m: &'m Received, name: &str) -> Option<&'m str> {
    m.message_attributes()?.get(name)?.string_value()
}

/// A received message's `ApproximateReceiveCount`, when asked for.
pub fn receive_count(m: &Received) -> Option<&str> {
    m.attributes()?.get(&MessageSystemAttributeName::ApproximateReceiveCount).map(String::as_str)
}
